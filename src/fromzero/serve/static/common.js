// What the three pages share: the API key field, JSON and SSE requests, and making elements from text.
// Model output and user text only ever go into the page as text (textContent / text nodes), never as HTML.
"use strict";

const fz = (() => {
  const KEY = "fromzero.apiKey";

  // localStorage, where the browser allows it (private modes may refuse: then nothing is remembered)
  function load(key) {
    try {
      return localStorage.getItem(key) || "";
    } catch (e) {
      return "";
    }
  }

  function save(key, value) {
    try {
      if (value) localStorage.setItem(key, value);
      else localStorage.removeItem(key);
    } catch (e) {
      // not remembered
    }
  }

  function apiKey() {
    return load(KEY);
  }

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    const key = apiKey();
    if (key) h["Authorization"] = "Bearer " + key;
    return h;
  }

  // An element with a class and text (the text set as text, whatever it holds).
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  // An error a request ended with; `network` when no answer came back at all.
  class ApiError extends Error {
    constructor(message, status, network) {
      super(message);
      this.status = status || 0;
      this.network = !!network;
    }
  }

  async function errorOf(response) {
    let message = response.status + " " + (response.statusText || "error");
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) message = body.error.message;
    } catch (e) {
      // not JSON: keep the status line
    }
    if (response.status === 401) message += " (set the API key at the top right)";
    return new ApiError(message, response.status, false);
  }

  // fetch that turns "no answer" into a network ApiError and a non-2xx answer into an ApiError with its message
  async function request(path, options) {
    const opts = Object.assign({}, options || {});
    const extra = {};
    if (opts.json !== undefined) {
      extra["Content-Type"] = "application/json";
      opts.body = JSON.stringify(opts.json);
      opts.method = opts.method || "POST";
      delete opts.json;
    }
    opts.headers = headers(Object.assign(extra, opts.headers || {}));
    let response;
    try {
      response = await fetch(path, opts);
    } catch (e) {
      if (e && e.name === "AbortError") throw e;
      throw new ApiError("network error: the server could not be reached", 0, true);
    }
    if (!response.ok) throw await errorOf(response);
    return response;
  }

  async function getJSON(path) {
    return (await request(path)).json();
  }

  async function postJSON(path, body, options) {
    return (await request(path, Object.assign({ json: body }, options || {}))).json();
  }

  // Read a server-sent event stream: onEvent(parsed JSON) for each `data:` event until `[DONE]`. Returns
  // whether `[DONE]` came (false: the stream ended before it).
  async function readSSE(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    const handle = (block) => {
      const data = block
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (!data) return false;
      if (data === "[DONE]") return true;
      let event;
      try {
        event = JSON.parse(data);
      } catch (e) {
        return false;
      }
      onEvent(event);
      return false;
    };
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (e) {
        if (e && e.name === "AbortError") throw e;
        throw new ApiError("network error: the stream was cut off", 0, true);
      }
      if (chunk.done) break;
      buffer += decoder.decode(chunk.value, { stream: true }).replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (handle(block)) {
          reader.cancel().catch(() => {});
          return true;
        }
      }
    }
    buffer += decoder.decode();
    return buffer.trim() ? handle(buffer) : false;
  }

  function setStatus(node, text, kind) {
    node.textContent = text || "";
    node.classList.toggle("error", kind === "error");
    node.classList.toggle("ok", kind === "ok");
  }

  // A random UUID; crypto.randomUUID exists only on https and localhost, getRandomValues everywhere.
  function uuid() {
    if (window.crypto && typeof window.crypto.randomUUID === "function") return window.crypto.randomUUID();
    const b = new Uint8Array(16);
    window.crypto.getRandomValues(b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
  }

  // Download what a GET returns as a file (a plain link could not send the API key).
  async function download(path, filename) {
    const response = await request(path);
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    const a = document.createElement("a");
    a.href = url;
    a.download = filename;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    return blob.size;
  }

  // The API key field in the nav bar: remembered in localStorage, sent as a Bearer token when set.
  function initKeyField() {
    const input = document.getElementById("api-key");
    if (!input) return;
    input.value = apiKey();
    const changed = () => {
      if (input.value.trim() === apiKey()) return;
      save(KEY, input.value.trim());
      document.dispatchEvent(new CustomEvent("fz:apikey"));
    };
    input.addEventListener("change", changed);
    const form = document.getElementById("key-form");
    if (form) {
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        changed();
      });
    }
  }

  document.addEventListener("DOMContentLoaded", initKeyField);

  return {
    load, save, apiKey, headers, el, clear, ApiError, request, getJSON, postJSON, readSSE, setStatus, uuid, download,
  };
})();
