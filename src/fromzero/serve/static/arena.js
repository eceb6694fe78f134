// The arena: one prompt, two anonymous answers streamed side by side from POST /api/arena, one vote
// (POST /api/vote), then the models' names. Answers are put in the page as text.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const SESSION_KEY = "fromzero.sessionId";
  const SIDES = ["a", "b"];
  const CHOICE_TEXT = { a: "A is better", b: "B is better", tie: "a tie", both_bad: "both are bad" };
  const form = $("ask-form");
  const promptBox = $("prompt");
  const askButton = $("ask");
  const battleBox = $("battle");
  const betterBox = $("better");
  const reveal = $("reveal");
  const nextButton = $("next");
  const status = $("status");
  const voteButtons = Array.from(document.querySelectorAll(".votes button"));
  const side = {};
  for (const s of SIDES) {
    side[s] = { card: $("card-" + s), text: $("answer-" + s), note: $("note-" + s), name: $("model-" + s + "-name") };
  }

  function sessionId() {
    let id = fz.load(SESSION_KEY);
    if (!id) {
      id = fz.uuid();
      fz.save(SESSION_KEY, id);
    }
    return id;
  }

  let round = null;

  function newRound() {
    return {
      id: null,
      controller: new AbortController(),
      nodes: {},
      started: { a: false, b: false },
      finished: { a: null, b: null },
      error: null,
      voting: false,
      voted: false,
      pending: null, // the vote last sent and not confirmed: {choice, better, key}, retried with the same key
    };
  }

  function canVote() {
    return !!(round && round.id && round.started.a && round.started.b && !round.error && !round.voting && !round.voted);
  }

  function updateButtons() {
    const open = canVote();
    for (const b of voteButtons) b.disabled = !open;
  }

  function clearRound() {
    if (round) round.controller.abort();
    round = null;
    for (const s of SIDES) {
      fz.clear(side[s].text);
      side[s].text.className = "text waiting";
      side[s].note.textContent = "";
      side[s].name.textContent = "";
      side[s].card.classList.remove("chosen");
    }
    for (const b of voteButtons) b.classList.remove("picked");
    fz.clear(reveal);
    reveal.classList.add("hidden");
    nextButton.classList.add("hidden");
    betterBox.value = "";
    betterBox.disabled = false;
    updateButtons();
  }

  function finishNote(reason) {
    return reason === "length" ? "stopped at the token limit" : "finished";
  }

  function onEvent(r, event) {
    if (event.error) {
      r.error = event.error.message || "generation failed";
      return;
    }
    if (event.id && !event.side) {
      r.id = event.id;
      return;
    }
    const s = event.side;
    if (!SIDES.includes(s)) return;
    const view = side[s];
    if (!r.started[s]) {
      r.started[s] = true;
      view.text.classList.remove("waiting");
      view.text.classList.add("streaming");
      r.nodes[s] = document.createTextNode("");
      view.text.appendChild(r.nodes[s]);
    }
    if (event.delta) {
      r.nodes[s].appendData(event.delta);
      view.text.scrollTop = view.text.scrollHeight;
    }
    if (event.finish_reason) {
      r.finished[s] = event.finish_reason;
      view.text.classList.remove("streaming");
      view.text.classList.add("done");
      view.note.textContent = finishNote(event.finish_reason);
    }
  }

  async function ask() {
    const text = promptBox.value.trim();
    if (!text || round) return;
    clearRound();
    const r = newRound();
    round = r;
    battleBox.classList.remove("hidden");
    promptBox.disabled = true;
    askButton.disabled = true;
    fz.setStatus(status, "Both models are writing…");
    const body = { messages: [{ role: "user", content: text }], stream: true, session_id: sessionId() };
    try {
      const response = await fz.request("/api/arena", { json: body, signal: r.controller.signal });
      const done = await fz.readSSE(response, (event) => {
        if (round !== r) return;
        onEvent(r, event);
        updateButtons();
      });
      if (round !== r) return;
      if (!r.error && !(r.finished.a && r.finished.b) && !done) {
        r.error = "the answers were cut off before they finished";
      }
      if (!r.error && !r.voting && !r.voted) fz.setStatus(status, "Both answers are in: which one do you prefer?");
    } catch (e) {
      if (round !== r || (e && e.name === "AbortError")) return;
      r.error = e.message || String(e);
    }
    if (r.error) {
      for (const s of SIDES) side[s].text.classList.remove("streaming", "waiting");
      fz.setStatus(status, "Error: " + r.error + " — this round cannot be voted on; try the next prompt.", "error");
      nextButton.classList.remove("hidden");
    }
    updateButtons();
  }

  function showReveal(models, choice) {
    fz.clear(reveal);
    reveal.appendChild(document.createTextNode("Model A was "));
    reveal.appendChild(fz.el("strong", null, models.a));
    reveal.appendChild(document.createTextNode(" and Model B was "));
    reveal.appendChild(fz.el("strong", null, models.b));
    reveal.appendChild(document.createTextNode(". You voted: " + CHOICE_TEXT[choice] + "."));
    reveal.classList.remove("hidden");
    side.a.name.textContent = models.a;
    side.b.name.textContent = models.b;
    if (choice === "a" || choice === "b") side[choice].card.classList.add("chosen");
    nextButton.classList.remove("hidden");
    nextButton.focus();
  }

  async function vote(choice, button) {
    if (!canVote()) return; // a second click while the first is on its way does nothing
    const r = round;
    r.voting = true;
    updateButtons();
    const better = betterBox.value.trim() || null;
    const same = r.pending && r.pending.choice === choice && r.pending.better === better;
    const key = same ? r.pending.key : fz.uuid();
    r.pending = { choice, better, key };
    const waiting = r.finished.a && r.finished.b ? "" : " (it is stored once both answers finish)";
    fz.setStatus(status, "Saving your vote…" + waiting);
    const body = { id: r.id, choice, idempotency_key: key, session_id: sessionId() };
    if (better) body.better = better;
    try {
      const answer = await fz.postJSON("/api/vote", body);
      if (round !== r) return;
      r.voted = true;
      r.pending = null;
      button.classList.add("picked");
      betterBox.disabled = true;
      showReveal(answer.models || {}, choice);
      fz.setStatus(status, answer.duplicate ? "This vote was already saved." : "Thanks, your vote is saved.", "ok");
    } catch (e) {
      if (round !== r) return;
      if (e.network) {
        fz.setStatus(status, "Network error: the vote was not confirmed. Click the same button again to retry " +
          "(it is counted once).", "error");
      } else if (e.status === 409 || e.status === 404) {
        r.voted = true; // the battle has another vote, or is gone: nothing more to send
        fz.setStatus(status, "Error: " + e.message, "error");
        nextButton.classList.remove("hidden");
      } else {
        r.pending = null;
        fz.setStatus(status, "Error: " + e.message, "error");
      }
    } finally {
      if (round === r) {
        r.voting = false;
        updateButtons();
      }
    }
  }

  function next() {
    clearRound();
    battleBox.classList.add("hidden");
    promptBox.disabled = false;
    askButton.disabled = false;
    promptBox.value = "";
    fz.setStatus(status, "");
    promptBox.focus();
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    ask();
  });
  promptBox.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      ask();
    }
  });
  for (const b of voteButtons) b.addEventListener("click", () => vote(b.dataset.choice, b));
  nextButton.addEventListener("click", next);
  sessionId();
  promptBox.focus();
})();
