// attnmt's attention lab: POST /trace decodes one sentence and returns every hypothesis the search looked at (a
// tree; greedy search: a chain). The page steps through it: at step t, the attention the decoder used to choose the
// t-th token, the most probable next tokens (click one to force it and decode on), every layer and head (a
// Transformer), the energies before the normalizer with what softmax, sparsemax and entmax15 make of them (an RNN),
// and for beam search the tree of kept, pruned and finished hypotheses; a Transformer's encoder and decoder
// self-attention (every layer and head, and each layer's mean). A server of several models: choose one, or compare
// them (the same sentence traced by each, translations and heatmaps side by side). The page draws what the server
// computed and averages nothing itself. Plain JavaScript, no libraries, no inline script (the CSP).
"use strict";

(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  const form = $("lab-form");
  const source = $("lab-source");
  const beamInput = $("lab-beam");
  const penaltyInput = $("lab-length-penalty");
  const prefixInput = $("lab-prefix");
  const candidatesInput = $("lab-candidates");
  const status = $("lab-status");
  const slider = $("step");
  const modelSelect = $("lab-model");
  let models = []; // /info's models: name, description, languages, examples (the default first)
  let trace = null; // the last answer of POST /trace
  let path = []; // node ids from the root to the hypothesis followed
  let step = 1; // 1..path.length - 1: the step on show
  let traced = null; // the request that gave `trace` (the permalink's)

  const { colour, shownToken } = window.attnmtShared; // shared.js
  const fixed = (value, digits) => (value === null || value === undefined ? "–" : Number(value).toFixed(digits));

  function svg(name, attributes, parent) {
    const element = document.createElementNS(SVG_NS, name);
    for (const [key, value] of Object.entries(attributes || {})) element.setAttribute(key, String(value));
    if (parent) parent.append(element);
    return element;
  }

  function setStatus(text, isError) {
    status.textContent = text;
    status.classList.toggle("error", Boolean(isError));
  }

  async function postJson(url, body) {
    const headers = { "Content-Type": "application/json" };
    const apiKey = $("lab-api-key").value.trim();
    if (apiKey) headers.Authorization = `Bearer ${apiKey}`; // a server started with --api-key asks for it
    const response = await fetch(url, { method: "POST", headers, body: JSON.stringify(body) });
    let data = null;
    try { data = await response.json(); } catch (_) { /* not JSON */ }
    if (!response.ok) throw new Error((data && data.error) || `The server answered ${response.status}.`);
    return data;
  }

  const several = () => models.length > 1;
  const chosenModel = () => models.find((m) => m.name === modelSelect.value) || models[0];

  function describeModel() {
    const m = chosenModel();
    if (m) $("model-info").textContent = `${m.source_language} → ${m.target_language} · ${m.model.summary}` +
      (several() ? ` (${m.name}, one of ${models.length} models)` : "");
  }

  async function loadInfo() {
    try {
      const info = await (await fetch("/info")).json();
      models = info.models || [];
      modelSelect.replaceChildren(...models.map((m) => {
        const option = document.createElement("option");
        option.value = m.name;
        option.textContent = `${m.name} · ${m.model.family}`;
        return option;
      }));
      $("lab-model-option").hidden = !several();
      $("lab-compare-models").hidden = !several();
      $("model-info").textContent = `${info.source_language} → ${info.target_language} · ${info.model.summary}`;
      describeModel();
      $("lab-api-key-option").hidden = !info.api_key_required;
      beamInput.max = info.limits.max_beam_size;
      penaltyInput.value = info.defaults.length_penalty;
      if (!source.value && (info.examples || []).length) source.value = info.examples[0];
    } catch (error) {
      $("model-info").textContent = `The model's description could not be loaded (${error.message}).`;
    }
  }

  // ---- the request --------------------------------------------------------------------------------------------

  function options() {
    const body = { text: source.value };
    if (several()) body.model = modelSelect.value;
    const beam = Number.parseInt(beamInput.value, 10);
    if (Number.isFinite(beam)) body.beam_size = beam;
    if (penaltyInput.value.trim() !== "") body.length_penalty = Number(penaltyInput.value);
    if (prefixInput.value !== "") body.prefix = prefixInput.value;
    const k = Number.parseInt(candidatesInput.value, 10);
    if (Number.isFinite(k)) body.candidates = k;
    return body;
  }

  async function runTrace(event, wantedStep) {
    if (event) event.preventDefault();
    setStatus("Decoding…");
    $("lab-trace").disabled = true;
    try {
      const request = options();
      const data = await postJson("/trace", request);
      traced = request;
      show(data, wantedStep);
      setStatus(`Decoded in ${Math.round(data.elapsed_ms)} ms: ${data.nodes.length} hypotheses looked at ` +
        `(${data.beam_size === 1 ? "greedy search" : `beam of ${data.beam_size}`}).`);
    } catch (error) {
      setStatus(error.message, true);
    } finally {
      $("lab-trace").disabled = false;
    }
  }

  // ---- the trace ----------------------------------------------------------------------------------------------

  const node = (id) => trace.nodes[id];

  function pathTo(id) {
    const ids = [];
    for (let n = node(id); n; n = n.parent === null ? null : node(n.parent)) ids.push(n.id);
    return ids.reverse();
  }

  function show(data, wantedStep) {
    trace = data;
    $("lab-result").hidden = false;
    $("lab-translation").textContent = translationText(data.best) || "(empty translation)";
    $("lab-source-tokens").replaceChildren(...data.source_tokens.map((token, j) => {
      const span = document.createElement("span");
      span.className = "token src";
      span.dataset.col = String(j);
      span.setAttribute("role", "listitem");
      span.textContent = shownToken(token);
      return span;
    }));
    $("tree-section").hidden = data.beam_size === 1;
    $("self-attention-section").hidden = !data.self_attention;
    if (data.self_attention) showSelfAttention(data.self_attention);
    $("heads-section").hidden = data.attention_layers * data.attention_heads <= 1;
    $("energies-section").hidden = !data.normalizer;
    if (data.beam_size > 1) drawTree();
    follow(data.best, wantedStep);
  }

  function translationText(ids) {
    return ids.slice(1).map((id) => node(id).token).filter((t) => t !== "</s>").join("")
      .replace(/\u2581/g, " ").trim();
  }

  function follow(ids, wantedStep) {
    path = ids;
    const steps = Math.max(1, path.length - 1);
    slider.max = String(steps);
    setStep(wantedStep ? Math.min(steps, wantedStep) : 1);
  }

  function setStep(t) {
    const began = performance.now();
    step = Math.max(1, Math.min(Number(slider.max), t));
    slider.value = String(step);
    renderStep();
    updatePermalink();
    document.body.dataset.stepMs = (performance.now() - began).toFixed(2); // read by tests/test_lab.py
  }

  function renderStep() {
    if (!trace || path.length < 2) {
      $("step-label").textContent = "Nothing decoded: the text is empty.";
      return;
    }
    const expanded = node(path[step - 1]); // the hypothesis the model read at this step
    const chosen = node(path[step]); // the token it added
    const steps = path.length - 1;
    $("step-label").textContent = `Step ${step} of ${steps}`;
    $("lab-target-tokens").replaceChildren(...path.slice(1).map((id, i) => {
      const span = document.createElement("span");
      span.className = "token tgt" + (i + 1 === step ? " active" : "") + (i + 1 > step ? " later" : "") +
        (node(id).forced ? " forced" : "");
      span.dataset.row = String(i + 1);
      span.setAttribute("role", "listitem");
      span.textContent = shownToken(node(id).token);
      return span;
    }));
    const weights = expanded.attention || [];
    for (const span of $("lab-source-tokens").children) {
      span.classList.add("linked");
      span.style.setProperty("--w", Math.min(1, Math.max(0, weights[Number(span.dataset.col)] || 0)).toFixed(3));
    }
    const probability = (expanded.candidates || []).find((c) => c.token === chosen.token);
    $("step-detail").textContent = `Step ${step}: chose ${shownToken(chosen.token)}` +
      (chosen.forced ? " (forced by the prefix)" : "") +
      (probability ? ` with p = ${probability.probability.toFixed(3)}` : "") +
      ` · log p ${fixed(chosen.log_prob, 3)} · score so far ${fixed(chosen.score, 3)}` +
      (chosen.status === "pruned" ? " · this hypothesis was pruned" : "");
    drawRow($("step-attention"), trace.source_tokens, weights);
    renderCandidates(expanded, chosen);
    if (!$("heads-section").hidden) drawHeads(expanded);
    if (!$("energies-section").hidden) renderEnergies(expanded);
    if (!$("tree-section").hidden) markTree(chosen.id);
  }

  function drawRow(target, tokens, weights) {
    // One row of cells, a source token each: the attention of one step. Cells carry data-col and data-weight.
    target.replaceChildren();
    const width = 56, height = 30, top = 22;
    target.setAttribute("width", tokens.length * width + 4);
    target.setAttribute("height", top + height + 18);
    target.dataset.cols = String(tokens.length);
    tokens.forEach((token, j) => {
      const w = Number(weights[j]) || 0;
      svg("text", { x: j * width + width / 2, y: 14, "text-anchor": "middle", class: "src-label" }, target)
        .textContent = shownToken(token).slice(0, 7);
      svg("rect", { class: "cell", x: j * width, y: top, width, height, fill: colour(w), "data-col": j,
                    "data-weight": w.toFixed(4) }, target);
      svg("text", { x: j * width + width / 2, y: top + height + 14, "text-anchor": "middle", class: "value" },
        target).textContent = w.toFixed(2);
    });
  }

  function renderCandidates(expanded, chosen) {
    const list = $("candidates");
    list.replaceChildren(...(expanded.candidates || []).map((candidate) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "candidate" + (candidate.token === chosen.token ? " chosen" : "");
      button.dataset.token = candidate.token;
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.setProperty("--p", candidate.probability.toFixed(4));
      const label = document.createElement("span");
      label.textContent = `${shownToken(candidate.token)}  ${candidate.probability.toFixed(3)}`;
      button.append(bar, label);
      if (candidate.token === "</s>") {
        button.disabled = true; // the end cannot be forced as a start
        button.title = "the end of the sentence";
      } else {
        button.title = "force this token here and decode on";
        button.addEventListener("click", () => forceCandidate(candidate.token));
      }
      item.append(button);
      return item;
    }));
  }

  function forceCandidate(token) {
    // What if: the path's tokens before this step, then the token clicked, become the forced prefix.
    const pieces = path.slice(1, step).map((id) => node(id).token).concat([token]);
    prefixInput.value = pieces.join("").replace(/\u2581/g, " ").trim();
    runTrace(null, step + 1);
  }

  function drawHeads(expanded) {
    // Rows: layer l head h for every head, then each layer's mean (the server's `attention` is the last layer's).
    const grid = $("heads-grid");
    grid.replaceChildren();
    const heads = expanded.attention_heads || [];
    const cols = trace.source_tokens.length, size = 22, left = 110, top = 20;
    const rows = [];
    heads.forEach((layer, l) => {
      layer.forEach((row, h) => rows.push([`layer ${l + 1} head ${h + 1}`, row]));
    });
    grid.setAttribute("width", left + cols * size + 4);
    grid.setAttribute("height", top + rows.length * size + 4);
    trace.source_tokens.forEach((token, j) => {
      svg("text", { x: left + j * size + size / 2, y: 14, "text-anchor": "middle", class: "src-label" }, grid)
        .textContent = shownToken(token).slice(0, 3);
    });
    rows.forEach(([name, row], i) => {
      svg("text", { x: left - 6, y: top + i * size + size / 2 + 4, "text-anchor": "end", class: "head-label" }, grid)
        .textContent = name;
      row.forEach((w, j) => {
        svg("rect", { class: "cell", x: left + j * size, y: top + i * size, width: size, height: size,
                      fill: colour(w), "data-row": i, "data-col": j, "data-weight": Number(w).toFixed(4) }, grid);
      });
    });
    grid.dataset.rows = String(rows.length);
  }

  function renderEnergies(expanded) {
    // The energies e of this step and normalize(e / T) for each normalizer: the same numbers, three distributions.
    const names = Object.keys(expanded.normalized || {});
    $("energies-note").textContent = `The model scores each source token (energy e), then its normalizer ` +
      `(${trace.normalizer}, temperature ${trace.temperature}) turns the energies into weights that sum to 1. ` +
      "Sparsemax and entmax15 can give exactly 0; softmax never does.";
    const head = $("energies").tHead.rows[0];
    head.replaceChildren(...["Source", "energy e", ...names].map((text) => {
      const th = document.createElement("th");
      th.scope = "col";
      th.textContent = text + (text === trace.normalizer ? " (the model's)" : "");
      return th;
    }));
    const body = $("energies").tBodies[0];
    body.replaceChildren(...trace.source_tokens.map((token, j) => {
      const tr = document.createElement("tr");
      const cells = [shownToken(token), fixed((expanded.energies || [])[j], 3),
                     ...names.map((name) => expanded.normalized[name][j])];
      cells.forEach((value, c) => {
        const cell = document.createElement(c === 0 ? "th" : "td");
        if (c >= 2) {
          cell.className = "weight";
          cell.dataset.normalizer = names[c - 2];
          cell.style.setProperty("--w", Number(value).toFixed(4));
          cell.textContent = Number(value).toFixed(3);
        } else {
          cell.textContent = value;
        }
        tr.append(cell);
      });
      return tr;
    }));
  }

  // ---- the beam tree ------------------------------------------------------------------------------------------

  function drawTree() {
    const tree = $("beam-tree");
    tree.replaceChildren();
    const columnWidth = 120, rowHeight = 26, left = 10, top = 10;
    const byDepth = [];
    for (const n of trace.nodes) (byDepth[n.depth] = byDepth[n.depth] || []).push(n);
    const place = {};
    byDepth.forEach((nodes, depth) => nodes.forEach((n, i) => {
      place[n.id] = { x: left + depth * columnWidth, y: top + i * rowHeight };
    }));
    const tallest = Math.max(...byDepth.map((nodes) => nodes.length));
    tree.setAttribute("width", left + byDepth.length * columnWidth + 20);
    tree.setAttribute("height", top + tallest * rowHeight + 10);
    const edges = svg("g", { class: "edges" }, tree);
    const nodes = svg("g", { class: "nodes" }, tree);
    for (const n of trace.nodes) {
      const at = place[n.id];
      if (n.parent !== null) {
        const from = place[n.parent];
        svg("line", { x1: from.x + 100, y1: from.y + 9, x2: at.x, y2: at.y + 9, class: `edge ${n.status}`,
                      "data-child": n.id }, edges);
      }
      const group = svg("g", { class: `node ${n.status}`, "data-id": n.id, "data-status": n.status,
                               transform: `translate(${at.x}, ${at.y})`, tabindex: 0, role: "button",
                               "aria-label": `${shownToken(n.token)}, ${n.status}, score ${fixed(n.score, 2)}` },
                          nodes);
      svg("rect", { width: 100, height: 18, rx: 4 }, group);
      svg("text", { x: 4, y: 13 }, group).textContent =
        `${shownToken(n.token).slice(0, 8)} ${n.parent === null ? "" : fixed(n.score, 2)}`;
      group.addEventListener("click", () => selectNode(n.id));
      group.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); selectNode(n.id); }
      });
    }
  }

  function selectNode(id) {
    if (node(id).parent === null) return;
    const ids = pathTo(id);
    follow(ids, ids.length - 1);
  }

  function markTree(currentId) {
    const on = new Set(path);
    for (const element of $("beam-tree").querySelectorAll("g.node")) {
      const id = Number(element.dataset.id);
      element.classList.toggle("on-path", on.has(id));
      element.classList.toggle("current", id === currentId);
    }
    for (const line of $("beam-tree").querySelectorAll("line.edge")) {
      line.classList.toggle("on-path", on.has(Number(line.dataset.child)));
    }
  }

  // ---- compare searches ---------------------------------------------------------------------------------------

  async function compare() {
    const beam = Math.max(2, Number.parseInt(beamInput.value, 10) || 5);
    const runs = [["greedy", { beam_size: 1 }], [`beam ${beam}, length penalty 0`, { beam_size: beam, length_penalty: 0 }],
                  [`beam ${beam}, length penalty 1`, { beam_size: beam, length_penalty: 1 }],
                  [`beam ${beam}, length penalty 2`, { beam_size: beam, length_penalty: 2 }]];
    const prefix = prefixInput.value ? { prefix: prefixInput.value } : {};
    if (several()) prefix.model = modelSelect.value;
    setStatus("Comparing…");
    try {
      const answers = await Promise.all(runs.map(([, body]) =>
        postJson("/translate", { text: source.value, ...prefix, ...body })));
      $("compare").tBodies[0].replaceChildren(...answers.map((answer, i) => {
        const tr = document.createElement("tr");
        const t = answer.translations[0];
        for (const value of [runs[i][0], t.text || "(empty)", fixed(t.score, 3), fixed(t.log_prob, 3)]) {
          const td = document.createElement("td");
          td.textContent = value;
          tr.append(td);
        }
        return tr;
      }));
      $("lab-result").hidden = false;
      $("compare-section").hidden = false;
      setStatus("Compared.");
    } catch (error) {
      setStatus(error.message, true);
    }
  }

  // ---- heatmaps of whole matrices ---------------------------------------------------------------------------

  function drawMatrix(target, rowLabels, colLabels, matrix, label) {
    // rows × columns of cells (data-row, data-col, data-weight), the labels on the left and on top.
    target.replaceChildren();
    target.classList.add("matrix");
    const size = 26, left = 8 + 7 * Math.max(1, ...rowLabels.map((t) => shownToken(t).length)),
      top = 8 + 7 * Math.max(1, ...colLabels.map((t) => shownToken(t).length));
    target.setAttribute("width", left + colLabels.length * size + 4);
    target.setAttribute("height", top + rowLabels.length * size + 4);
    target.dataset.rows = String(rowLabels.length);
    target.dataset.cols = String(colLabels.length);
    if (label) target.setAttribute("aria-label", label);
    colLabels.forEach((token, j) => {
      svg("text", { transform: `translate(${left + j * size + size / 2 + 4}, ${top - 4}) rotate(-90)`,
                    class: "src-label" }, target).textContent = shownToken(token);
    });
    rowLabels.forEach((token, i) => {
      svg("text", { x: left - 4, y: top + i * size + size / 2 + 4, "text-anchor": "end", class: "tgt-label" }, target)
        .textContent = shownToken(token);
      (matrix[i] || []).forEach((w, j) => {
        svg("rect", { class: "cell", x: left + j * size, y: top + i * size, width: size, height: size,
                      fill: colour(w), "data-row": i, "data-col": j, "data-weight": Number(w).toFixed(4) }, target);
      });
    });
  }

  // ---- compare models -----------------------------------------------------------------------------------------

  function bestRows(data) {
    // The best translation's tokens (its </s> last) and the attention with which each was chosen.
    const rows = data.best.slice(1);
    return { tokens: rows.map((id) => data.nodes[id].token),
             attention: rows.map((id) => data.nodes[data.nodes[id].parent].attention || []) };
  }

  const bestText = (data) => data.best.slice(1).map((id) => data.nodes[id].token).filter((t) => t !== "</s>")
    .join("").replace(/\u2581/g, " ").trim();

  async function compareModels() {
    // The same sentence and search traced by every served model, one column each.
    const body = options();
    setStatus("Comparing the models…");
    $("lab-compare-models").disabled = true;
    try {
      const answers = await Promise.allSettled(models.map((m) => postJson("/trace", { ...body, model: m.name })));
      $("models-compare").replaceChildren(...answers.map((answer, i) => modelColumn(models[i], answer)));
      $("models-section").hidden = false;
      const failed = answers.filter((a) => a.status === "rejected").length;
      setStatus(`Compared ${models.length} models` + (failed ? ` (${failed} could not decode it).` : "."), failed > 0);
    } finally {
      $("lab-compare-models").disabled = false;
    }
  }

  function modelColumn(m, answer) {
    const column = document.createElement("div");
    column.className = "model-column";
    column.dataset.model = m.name;
    const heading = document.createElement("h3");
    heading.textContent = m.name;
    const summary = document.createElement("p");
    summary.className = "muted small";
    summary.textContent = m.model.summary;
    column.append(heading, summary);
    if (answer.status === "rejected") {
      const error = document.createElement("p");
      error.className = "error";
      error.textContent = answer.reason.message;
      column.append(error);
      return column;
    }
    const data = answer.value;
    const text = document.createElement("p");
    text.className = "translation";
    text.textContent = bestText(data) || "(empty translation)";
    const detail = document.createElement("p");
    detail.className = "muted small";
    const best = data.nodes[data.best[data.best.length - 1]];
    detail.textContent = `score ${fixed(best.normalized_score, 3)} · log p ${fixed(best.score, 3)} · ` +
      `${data.nodes.length} hypotheses looked at`;
    const map = document.createElementNS(SVG_NS, "svg");
    map.setAttribute("role", "img");
    const rows = bestRows(data);
    drawMatrix(map, rows.tokens, data.source_tokens, rows.attention, `${m.name}: attention of the translation`);
    const wrap = document.createElement("div");
    wrap.className = "heatmap-wrap";
    wrap.append(map);
    column.append(text, detail, wrap);
    return column;
  }

  // ---- self-attention (a Transformer) -------------------------------------------------------------------------

  const SIDES = ["encoder", "decoder"];
  let selfAttention = null; // the trace's self_attention

  function sideLabels(side) {
    return side === "encoder" ? trace.source_tokens : selfAttention.decoder_tokens;
  }

  function fillChoice(select, values, names, keep) {
    select.replaceChildren(...values.map((value, i) => {
      const option = document.createElement("option");
      option.value = String(value);
      option.textContent = names[i];
      return option;
    }));
    if (values.map(String).includes(keep)) select.value = keep;
  }

  function showSelfAttention(data) {
    selfAttention = data;
    for (const side of SIDES) {
      const layers = data[side].length, heads = (data[side][0] || []).length;
      const layer = $(`self-${side}-layer`), head = $(`self-${side}-head`);
      const keptLayer = layer.value || String(layers), keptHead = head.value || "mean";
      fillChoice(layer, [...Array(layers).keys()].map((l) => l + 1),
                 [...Array(layers).keys()].map((l) => `${l + 1} of ${layers}`), keptLayer);
      if (!layer.value || Number(layer.value) > layers) layer.value = String(layers);
      fillChoice(head, ["mean", ...[...Array(heads).keys()].map((h) => h + 1)],
                 ["mean of the heads", ...[...Array(heads).keys()].map((h) => `${h + 1} of ${heads}`)], keptHead);
      drawThumbs(side);
      drawSelfView(side);
    }
  }

  function selfMatrix(side, layer, head) {
    // layer 1-based; head 1-based or "mean" (the server's layer mean)
    return head === "mean" ? selfAttention[`${side}_layer_means`][layer - 1] : selfAttention[side][layer - 1][head - 1];
  }

  function drawSelfView(side) {
    const layer = Number($(`self-${side}-layer`).value), head = $(`self-${side}-head`).value;
    const labels = sideLabels(side);
    const matrix = selfMatrix(side, layer, head === "mean" ? "mean" : Number(head));
    drawMatrix($(`self-${side}`), labels, labels, matrix,
               `${side} self-attention, layer ${layer}, ${head === "mean" ? "mean of the heads" : `head ${head}`}`);
    for (const thumb of $(`self-${side}-grid`).querySelectorAll("g.thumb")) {
      thumb.classList.toggle("selected", thumb.dataset.layer === String(layer) && thumb.dataset.head === head);
    }
  }

  function drawThumbs(side) {
    // One small heatmap per layer (row) and head (column), each layer's mean last.
    const grid = $(`self-${side}-grid`);
    grid.replaceChildren();
    const heads = selfAttention[side][0].length, layers = selfAttention[side].length;
    const n = sideLabels(side).length, cell = Math.max(2, Math.floor(72 / Math.max(1, n))), box = n * cell;
    const gap = 10, left = 56, top = 18;
    grid.setAttribute("width", left + (heads + 1) * (box + gap));
    grid.setAttribute("height", top + layers * (box + gap));
    for (let h = 0; h <= heads; h++) {
      svg("text", { x: left + h * (box + gap) + box / 2, y: 12, "text-anchor": "middle" }, grid)
        .textContent = h === heads ? "mean" : `head ${h + 1}`;
    }
    for (let l = 1; l <= layers; l++) {
      const y = top + (l - 1) * (box + gap);
      svg("text", { x: left - 6, y: y + box / 2 + 4, "text-anchor": "end" }, grid).textContent = `layer ${l}`;
      for (let h = 0; h <= heads; h++) {
        const head = h === heads ? "mean" : String(h + 1);
        const x = left + h * (box + gap);
        const group = svg("g", { class: "thumb", "data-layer": l, "data-head": head, tabindex: 0, role: "button",
                                 transform: `translate(${x}, ${y})`,
                                 "aria-label": `layer ${l}, ${head === "mean" ? "mean of the heads" : `head ${head}`}` },
                          grid);
        selfMatrix(side, l, head === "mean" ? "mean" : Number(head)).forEach((row, i) => row.forEach((w, j) => {
          svg("rect", { x: j * cell, y: i * cell, width: cell, height: cell, fill: colour(w) }, group);
        }));
        svg("rect", { class: "frame", x: -1, y: -1, width: box + 2, height: box + 2 }, group);
        const choose = () => {
          $(`self-${side}-layer`).value = String(l);
          $(`self-${side}-head`).value = head;
          drawSelfView(side);
        };
        group.addEventListener("click", choose);
        group.addEventListener("keydown", (event) => {
          if (event.key === "Enter" || event.key === " ") { event.preventDefault(); choose(); }
        });
      }
    }
  }

  // ---- share --------------------------------------------------------------------------------------------------

  function pathHeatmap() {
    // A standalone SVG of the path on show: rows = its target tokens, columns = source tokens.
    const cols = trace.source_tokens, rows = path.slice(1).map((id) => node(id).token);
    const size = 34, left = 12 + 9 * Math.max(1, ...rows.map((t) => t.length)),
      top = 14 + 9 * Math.max(1, ...cols.map((t) => t.length));
    const out = document.createElementNS(SVG_NS, "svg");
    out.setAttribute("xmlns", SVG_NS);
    const width = left + cols.length * size + 8, height = top + rows.length * size + 8;
    for (const [k, v] of Object.entries({ width, height, viewBox: `0 0 ${width} ${height}`,
                                          "font-family": "sans-serif", "font-size": 14 })) out.setAttribute(k, v);
    svg("rect", { width, height, fill: "#fff" }, out);
    cols.forEach((token, j) => {
      svg("text", { transform: `translate(${left + j * size + size / 2 + 5}, ${top - 6}) rotate(-90)` }, out)
        .textContent = shownToken(token);
    });
    rows.forEach((token, i) => {
      svg("text", { x: left - 6, y: top + i * size + size / 2 + 5, "text-anchor": "end" }, out)
        .textContent = shownToken(token);
      (node(path[i]).attention || []).forEach((w, j) => {
        svg("rect", { x: left + j * size, y: top + i * size, width: size, height: size, fill: colour(w),
                      stroke: "#fff" }, out);
      });
    });
    return out;
  }

  function save(blob, name) {
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = name;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  }

  const svgText = () => new XMLSerializer().serializeToString(pathHeatmap());

  function downloadPng() {
    const text = svgText();
    const image = new Image();
    image.onload = () => {
      const canvas = document.createElement("canvas");
      canvas.width = image.width;
      canvas.height = image.height;
      canvas.getContext("2d").drawImage(image, 0, 0);
      canvas.toBlob((blob) => save(blob, "attention.png"), "image/png");
    };
    // a data: URL (the page's CSP allows images from data:, not from blob:)
    image.src = "data:image/svg+xml;base64," + btoa(unescape(encodeURIComponent(text)));
  }

  function updatePermalink() {
    if (!traced) return;
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(traced)) params.set(key, String(value));
    params.set("step", String(step));
    $("permalink").href = `/lab#${params.toString()}`;
  }

  function fromPermalink() {
    // /lab#text=...&beam_size=...&step=...: fill the form and decode, at that step.
    const params = new URLSearchParams(location.hash.slice(1));
    if (!params.has("text")) return false;
    source.value = params.get("text");
    if (params.has("model") && models.some((m) => m.name === params.get("model"))) {
      modelSelect.value = params.get("model");
      describeModel();
    }
    if (params.has("beam_size")) beamInput.value = params.get("beam_size");
    if (params.has("length_penalty")) penaltyInput.value = params.get("length_penalty");
    prefixInput.value = params.get("prefix") || "";
    if (params.has("candidates")) candidatesInput.value = params.get("candidates");
    runTrace(null, Number(params.get("step")) || 1);
    return true;
  }

  // ---- wiring -------------------------------------------------------------------------------------------------

  form.addEventListener("submit", (event) => runTrace(event));
  $("lab-compare").addEventListener("click", compare);
  $("lab-compare-models").addEventListener("click", compareModels);
  modelSelect.addEventListener("change", describeModel);
  for (const side of SIDES) {
    $(`self-${side}-layer`).addEventListener("change", () => drawSelfView(side));
    $(`self-${side}-head`).addEventListener("change", () => drawSelfView(side));
  }
  slider.addEventListener("input", () => setStep(Number(slider.value)));
  $("step-first").addEventListener("click", () => setStep(1));
  $("step-prev").addEventListener("click", () => setStep(step - 1));
  $("step-next").addEventListener("click", () => setStep(step + 1));
  $("step-last").addEventListener("click", () => setStep(Number(slider.max)));
  $("download-svg").addEventListener("click", () =>
    save(new Blob([svgText()], { type: "image/svg+xml" }), "attention.svg"));
  $("download-png").addEventListener("click", downloadPng);
  $("download-json").addEventListener("click", () =>
    save(new Blob([JSON.stringify(trace, null, 1)], { type: "application/json" }), "trace.json"));
  window.addEventListener("hashchange", fromPermalink); // a permalink opened from this page
  loadInfo().then(() => fromPermalink());
})();
