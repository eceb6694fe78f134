// The chat page: a multi-turn conversation with one served model, its answer streamed token by token from
// POST /v1/chat/completions. Every message is put in the page as text.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const modelSelect = $("model");
  const systemBox = $("system");
  const temperatureBox = $("temperature");
  const topPBox = $("top-p");
  const maxTokensBox = $("max-tokens");
  const messagesBox = $("messages");
  const emptyNote = $("empty");
  const input = $("message");
  const sendButton = $("send");
  const resetButton = $("reset");
  const status = $("status");
  const MODEL_KEY = "fromzero.chatModel";

  let history = []; // the conversation so far: {role: "user" | "assistant", content}
  let busy = false;
  let controller = null; // aborts the answer being streamed (Reset)

  function setBusy(value) {
    busy = value;
    sendButton.disabled = value;
    sendButton.textContent = value ? "Writing…" : "Send";
  }

  async function loadModels() {
    try {
      const body = await fz.getJSON("/v1/models");
      const wanted = modelSelect.value || fz.load(MODEL_KEY);
      fz.clear(modelSelect);
      for (const m of body.data || []) {
        const option = fz.el("option", null, m.stage && m.stage !== m.id ? m.id + " (" + m.stage + ")" : m.id);
        option.value = m.id;
        modelSelect.appendChild(option);
      }
      if (wanted && Array.from(modelSelect.options).some((o) => o.value === wanted)) modelSelect.value = wanted;
      if (!modelSelect.options.length) fz.setStatus(status, "This server serves no model.", "error");
      else if (status.classList.contains("error")) fz.setStatus(status, "");
    } catch (e) {
      fz.setStatus(status, "Could not list the models: " + e.message, "error");
    }
  }

  function scrollDown() {
    messagesBox.scrollTop = messagesBox.scrollHeight;
  }

  // one message: <div class="msg ROLE"><div class="role">…</div><div class="content">text</div></div>
  function addMessage(role, text) {
    emptyNote.classList.add("hidden");
    const box = fz.el("div", "msg " + role);
    box.appendChild(fz.el("div", "role", role === "user" ? "You" : modelSelect.value || "assistant"));
    const content = fz.el("div", "content");
    const textNode = document.createTextNode(text || "");
    content.appendChild(textNode);
    box.appendChild(content);
    messagesBox.appendChild(box);
    scrollDown();
    return { box, textNode };
  }

  function number(box, parse) {
    const v = parse(box.value);
    return Number.isFinite(v) ? v : undefined;
  }

  async function send() {
    const text = input.value.trim();
    if (busy || !text) return;
    const model = modelSelect.value;
    if (!model) {
      fz.setStatus(status, "Pick a model first.", "error");
      return;
    }
    const system = systemBox.value.trim();
    history.push({ role: "user", content: text });
    const messages = (system ? [{ role: "system", content: system }] : []).concat(history);
    input.value = "";
    for (const node of Array.from(messagesBox.querySelectorAll(".msg.failed"))) node.remove(); // a turn retried
    const question = addMessage("user", text);
    const answer = addMessage("assistant", "");
    answer.box.classList.add("streaming");
    setBusy(true);
    fz.setStatus(status, model + " is writing…");

    const body = {
      model,
      messages,
      stream: true,
      stream_options: { include_usage: true },
      temperature: number(temperatureBox, parseFloat),
      top_p: number(topPBox, parseFloat),
      max_tokens: number(maxTokensBox, (v) => parseInt(v, 10)),
    };
    const mine = new AbortController();
    controller = mine;
    let written = "";
    let finish = null;
    let tokens = null;
    try {
      const response = await fz.request("/v1/chat/completions", { json: body, signal: mine.signal });
      const done = await fz.readSSE(response, (event) => {
        if (event.error) throw new fz.ApiError(event.error.message || "generation failed", 500, false);
        if (event.usage) tokens = event.usage.completion_tokens;
        const choice = (event.choices || [])[0];
        if (!choice) return;
        const piece = choice.delta && choice.delta.content;
        if (piece) {
          written += piece;
          answer.textNode.appendData(piece);
          scrollDown();
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      });
      if (!done && !finish) throw new fz.ApiError("the answer was cut off before it finished", 0, true);
      history.push({ role: "assistant", content: written });
      answer.box.classList.remove("streaming");
      answer.box.classList.add("done");
      answer.box.dataset.finish = finish || "";
      const count = tokens === null ? "" : ", " + tokens + " tokens";
      const why = finish === "length" ? " (stopped at max tokens)" : "";
      fz.setStatus(status, model + " answered" + count + why + ".", "ok");
    } catch (e) {
      if (controller !== mine) return; // reset while writing: that conversation is gone
      history.pop(); // the turn failed: the question goes back to the box to try again
      if (!input.value) input.value = text;
      answer.box.classList.remove("streaming");
      answer.box.classList.add("error", "done", "failed");
      question.box.classList.add("failed");
      if (!written) answer.textNode.appendData("(no answer: see the error below)");
      fz.setStatus(status, "Error: " + (e.message || e), "error");
    } finally {
      if (controller === mine) {
        controller = null;
        setBusy(false);
        input.focus();
      }
    }
  }

  function reset() {
    if (controller) controller.abort();
    controller = null;
    history = [];
    for (const node of Array.from(messagesBox.querySelectorAll(".msg"))) node.remove();
    emptyNote.classList.remove("hidden");
    setBusy(false);
    fz.setStatus(status, "");
    input.focus();
  }

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  resetButton.addEventListener("click", reset);
  modelSelect.addEventListener("change", () => fz.save(MODEL_KEY, modelSelect.value));
  document.addEventListener("fz:apikey", loadModels);
  loadModels();
})();
