// The leaderboard: the ranking (GET /api/leaderboard), the votes per pair of models (GET /api/votes), and the
// votes as JSONL downloads (fetched with the API key, then saved from a Blob). Names are put in as text.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const rankingBody = $("ranking").querySelector("tbody");
  const pairsBody = $("pairs").querySelector("tbody");
  const total = $("total");
  const status = $("status");

  function cell(text, className) {
    return fz.el("td", className || null, text);
  }

  function emptyRow(body, columns, text) {
    const row = fz.el("tr");
    const td = cell(text, "none");
    td.colSpan = columns;
    row.appendChild(td);
    body.appendChild(row);
  }

  function fixed(x) {
    return typeof x === "number" ? x.toFixed(1) : "–";
  }

  function showRanking(models) {
    fz.clear(rankingBody);
    if (!models.length) return emptyRow(rankingBody, 6, "No models.");
    models.forEach((m, i) => {
      const row = fz.el("tr");
      row.dataset.model = m.model;
      row.appendChild(cell(i + 1, "num"));
      row.appendChild(cell(m.model, "col-model"));
      row.appendChild(cell(fixed(m.rating), "num col-rating"));
      const ci = Array.isArray(m.ci) ? fixed(m.ci[0]) + " – " + fixed(m.ci[1]) : "–";
      row.appendChild(cell(ci, "num col-ci"));
      row.appendChild(cell(m.votes, "num col-votes"));
      row.appendChild(cell(m.wins + " / " + m.losses + " / " + m.ties, "num col-wlt"));
      rankingBody.appendChild(row);
    });
  }

  function showPairs(pairs) {
    fz.clear(pairsBody);
    if (!pairs.length) return emptyRow(pairsBody, 7, "No votes yet: vote in the arena.");
    for (const p of pairs) {
      const [x, y] = p.models;
      const wins = p.wins || {};
      const row = fz.el("tr");
      row.appendChild(cell(x, "col-model"));
      row.appendChild(cell(y, "col-model"));
      row.appendChild(cell(p.votes, "num col-votes"));
      row.appendChild(cell(wins[x] || 0, "num col-wins-1"));
      row.appendChild(cell(wins[y] || 0, "num col-wins-2"));
      row.appendChild(cell(p.tie || 0, "num col-tie"));
      row.appendChild(cell(p.both_bad || 0, "num col-both-bad"));
      pairsBody.appendChild(row);
    }
  }

  async function refresh() {
    fz.setStatus(status, "Loading…");
    try {
      const [board, votes] = await Promise.all([fz.getJSON("/api/leaderboard"), fz.getJSON("/api/votes")]);
      showRanking(board.models || []);
      showPairs(votes.pairs || []);
      total.textContent = String(votes.total);
      document.body.dataset.loaded = "1";
      fz.setStatus(status, "Updated " + new Date().toLocaleTimeString() + ".");
    } catch (e) {
      fz.setStatus(status, "Could not load the leaderboard: " + e.message, "error");
    }
  }

  async function save(path, filename, button) {
    button.disabled = true;
    try {
      const size = await fz.download(path, filename);
      fz.setStatus(status, "Downloaded " + filename + " (" + size + " bytes).", "ok");
    } catch (e) {
      fz.setStatus(status, "Download failed: " + e.message, "error");
    } finally {
      button.disabled = false;
    }
  }

  $("refresh").addEventListener("click", refresh);
  $("download-preferences").addEventListener("click", (event) =>
    save("/api/export/preferences.jsonl", "preferences.jsonl", event.currentTarget));
  $("download-battles").addEventListener("click", (event) =>
    save("/api/export/battles.jsonl", "battles.jsonl", event.currentTarget));
  document.addEventListener("fz:apikey", refresh);
  refresh();
})();
