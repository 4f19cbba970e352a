// attnmt's page: send the text to POST /translate, show the translation, and draw the attention as an SVG heatmap
// with one <rect class="cell" data-row=i data-col=j> per target token i × source token j. Hovering (or focusing)
// a target token highlights the source tokens it attends to, with the weight as the highlight's opacity, and the
// reverse. A model with several attention layers or heads (a Transformer: L decoder layers × H heads) gets a Layer
// and a Head choice; the page draws the matrix the server sent for that choice (`attention_layer_means[l - 1]` or
// `attention_heads[l - 1][h - 1]`) and never averages anything itself. Plain JavaScript, no libraries: the page
// works offline.
"use strict";

(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  const form = $("translate-form");
  const source = $("source");
  const beamInput = $("beam-size");
  const nBestInput = $("n-best");
  const lengthPenaltyInput = $("length-penalty");
  const prefixInput = $("prefix");
  const apiKeyInput = $("api-key");
  const button = $("translate");
  const status = $("status");
  const result = $("result");
  const heatmap = $("heatmap");
  const detail = $("focus-detail");
  const viewControls = $("attention-view");
  const layerSelect = $("attention-layer");
  const headSelect = $("attention-head");
  const viewNote = $("attention-view-note");
  let current = null; // the translation on show
  let shown = null; // the attention matrix on show [T][S]: the chosen layer and head of `current`
  let layout = { layers: 0, heads: 0 }; // attention layers × heads per layer, from /info (or the last answer)

  const { colour, shownToken } = window.attnmtShared; // shared.js: the colour scale, the word-start mark

  function setStatus(text, isError) {
    status.textContent = text;
    status.classList.toggle("error", Boolean(isError));
  }

  function languageTag(name) {
    // Use a configured language name as `lang` only when it looks like a BCP 47 tag (e.g. "ko", "en", "de").
    return /^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$/.test(name) && !["src", "tgt"].includes(name) ? name : "";
  }

  async function loadInfo() {
    try {
      const response = await fetch("/info");
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const info = await response.json();
      const model = info.model;
      const layers = Number(model.attention_layers) || 0, heads = Number(model.attention_heads) || 0;
      let attention = "";
      if (layers * heads > 1) {
        attention = ` · attention: ${model.attention}, ${plural(layers, "layer")} × ${plural(heads, "head")}`;
      } else if (!/attention/i.test(model.summary)) {
        attention = ` · attention: ${model.attention}`;
      }
      $("model-info").textContent = `${info.source_language} → ${info.target_language} · ${model.summary}` +
        `${attention} · vocabularies ${info.source_vocab_size} / ${info.target_vocab_size}`;
      setLayout(layers, heads);
      $("source-lang").textContent = `(${info.source_language})`;
      $("api-key-option").hidden = !info.api_key_required;
      beamInput.max = info.limits.max_beam_size;
      beamInput.value = info.defaults.beam_size;
      nBestInput.max = info.limits.max_n_best;
      lengthPenaltyInput.max = info.limits.max_length_penalty;
      lengthPenaltyInput.value = info.defaults.length_penalty;
      prefixInput.maxLength = info.limits.max_text_chars;
      prefixInput.value = info.defaults.prefix || "";
      source.maxLength = info.limits.max_text_chars;
      const srcLang = languageTag(info.source_language);
      const tgtLang = languageTag(info.target_language);
      if (srcLang) { source.lang = srcLang; $("source-tokens").lang = srcLang; }
      if (tgtLang) { $("translation").lang = tgtLang; $("target-tokens").lang = tgtLang; $("nbest").lang = tgtLang; }
      renderExamples(info.examples || [], srcLang);
    } catch (error) {
      $("model-info").textContent = `The model's description could not be loaded (${error.message}).`;
    }
  }

  // Example sentences (the model directory's examples.txt): a click puts one in the text box and translates it.
  function renderExamples(examples, lang) {
    const list = $("example-list");
    list.replaceChildren(...examples.map((text) => {
      const chip = document.createElement("button");
      chip.type = "button";
      chip.className = "example";
      chip.textContent = text;
      if (lang) chip.lang = lang;
      chip.addEventListener("click", () => {
        source.value = text;
        form.requestSubmit();
      });
      return chip;
    }));
    $("examples").hidden = examples.length === 0;
  }

  function plural(count, noun) {
    return `${count} ${noun}${count === 1 ? "" : "s"}`;
  }

  // ---- the layer and head choice -------------------------------------------------------------------------------

  function option(value, text) {
    const element = document.createElement("option");
    element.value = value;
    element.textContent = text;
    return element;
  }

  function setLayout(layers, heads) {
    // The choices for L layers × H heads: Layer 1..L (default L, the last), Head "mean of the heads" (default), 1..H.
    if (layers === layout.layers && heads === layout.heads) return;
    layout = { layers, heads };
    const numbers = (count) => Array.from({ length: count }, (_, k) => String(k + 1));
    layerSelect.replaceChildren(...numbers(layers).map((n) => option(n, n)));
    layerSelect.value = String(layers);
    headSelect.replaceChildren(option("mean", "mean of the heads"), ...numbers(heads).map((n) => option(n, n)));
    headSelect.value = "mean";
    $("attention-view-hint").textContent = `The decoder attends to the source in each of its ` +
      `${plural(layers, "attention layer")}, with ${plural(heads, "head")} per layer; by default the page shows ` +
      "the last layer, averaged over its heads.";
  }

  function hasViews(translation) {
    // The server sends every layer and head only when there is more than one (L·H > 1).
    return Boolean(translation && Array.isArray(translation.attention_heads) &&
      Array.isArray(translation.attention_layer_means) && translation.attention_heads.length &&
      (translation.target_tokens || []).length && (translation.source_tokens || []).length);
  }

  function chosenView() {
    const layer = Number(layerSelect.value) || layout.layers;
    const head = headSelect.value === "mean" ? null : Number(headSelect.value);
    return { layer, head };
  }

  function viewText({ layer, head }) {
    return `layer ${layer} of ${layout.layers}, ` +
      (head === null ? `mean of ${plural(layout.heads, "head")}` : `head ${head} of ${layout.heads}`);
  }

  function attentionToShow(translation) {
    // The matrix for the chosen layer and head, as the server computed it; the default view without a choice.
    if (!hasViews(translation)) return translation.attention;
    const { layer, head } = chosenView();
    if (head === null) return translation.attention_layer_means[layer - 1];
    return (translation.attention_heads[layer - 1] || [])[head - 1];
  }

  function showView(translation) {
    // The controls and the note under the heatmap, for a translation with several layers or heads.
    const views = hasViews(translation);
    if (views) {
      const layers = translation.attention_heads.length, heads = (translation.attention_heads[0] || []).length;
      if (layers !== layout.layers || heads !== layout.heads) setLayout(layers, heads); // /info did not load
    }
    const multiple = views && layout.layers * layout.heads > 1;
    viewControls.hidden = !multiple;
    viewNote.hidden = !multiple;
    viewNote.textContent = multiple ? `Shown: ${viewText(chosenView())}.` : "";
    shown = attentionToShow(translation);
  }

  function changeView() {
    if (!current) return;
    clearFocus();
    showView(current);
    renderHeatmap(current, shown);
  }

  function positiveInt(input) {
    const value = Number.parseInt(input.value, 10);
    return Number.isFinite(value) && value >= 1 ? value : undefined;
  }

  async function translate(event) {
    event.preventDefault();
    const beam = positiveInt(beamInput);
    let nBest = positiveInt(nBestInput);
    if (nBest !== undefined && beam !== undefined && nBest > beam) {
      nBest = beam; // a beam of k keeps k hypotheses: show at most that many
      nBestInput.value = beam;
    }
    const body = { text: source.value, return_attention: true };
    if (beam !== undefined) body.beam_size = beam;
    if (nBest !== undefined) body.n_best = nBest;
    // sent as typed: the server checks the options (and says what is wrong); a blank field leaves the default
    if (lengthPenaltyInput.value.trim() !== "") body.length_penalty = Number(lengthPenaltyInput.value);
    if (prefixInput.value !== "") body.prefix = prefixInput.value;
    button.disabled = true;
    result.setAttribute("aria-busy", "true");
    setStatus("Translating…");
    try {
      const headers = { "Content-Type": "application/json" };
      const apiKey = apiKeyInput.value.trim();
      if (apiKey) headers.Authorization = `Bearer ${apiKey}`; // a server started with --api-key asks for it
      const response = await fetch("/translate", { method: "POST", headers, body: JSON.stringify(body) });
      let data = null;
      try { data = await response.json(); } catch (_) { /* not JSON: say the status */ }
      if (!response.ok) {
        setStatus((data && data.error) || `The server answered ${response.status}.`, true);
        return;
      }
      await render(data.translations[0]);
      setStatus(`Translated in ${Math.round(data.elapsed_ms)} ms (beam ${data.beam_size}).`);
    } catch (error) {
      setStatus(`The server cannot be reached (${error.message}).`, true);
    } finally {
      button.disabled = false;
      result.removeAttribute("aria-busy");
    }
  }


  async function render(received) {
    const translation = { ...received, source_tokens: (received.source_tokens || []).map(shownToken),
                          target_tokens: (received.target_tokens || []).map(shownToken) };
    current = translation;
    result.hidden = false;
    const text = $("translation");
    text.textContent = translation.text || "(empty translation)";
    text.classList.toggle("empty", !translation.text);
    $("score").textContent = scores(translation);
    renderNBest(translation.n_best || []);
    renderTokens(translation);
    showView(translation);
    // Measure the heatmap's labels in their real font: a Hangul font may still be loading.
    if (document.fonts && document.fonts.ready) await document.fonts.ready;
    renderHeatmap(translation, shown);
    detail.textContent = "";
  }

  // The two numbers of a translation, as the API gives them: the score the beam ranks by (length-normalized) and the
  // log-probability Σ log p; one when they are equal (greedy search, length_penalty 0).
  function scores(hypothesis) {
    const shown = (value) => value === null || value === undefined ? "–" : value.toFixed(3);
    if (hypothesis.score === undefined && hypothesis.log_prob === undefined) return "";
    if (hypothesis.score === hypothesis.log_prob) return `log-probability ${shown(hypothesis.log_prob)}`;
    return `score ${shown(hypothesis.score)} · log-probability ${shown(hypothesis.log_prob)}`;
  }

  function renderNBest(hypotheses) {
    const list = $("nbest");
    list.replaceChildren();
    for (const hypothesis of hypotheses) {
      const item = document.createElement("li");
      const text = document.createElement("span");
      text.className = "hypothesis";
      text.textContent = hypothesis.text || "(empty)";
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = scores(hypothesis);
      item.append(text, score);
      list.append(item);
    }
    $("nbest-section").hidden = hypotheses.length < 2;
  }

  function tokenSpan(token, kind, index) {
    const span = document.createElement("span");
    span.className = `token ${kind}`;
    span.tabIndex = 0;
    span.setAttribute("role", "listitem");
    span.dataset[kind === "src" ? "col" : "row"] = String(index);
    span.textContent = token;
    return span;
  }

  function renderTokens(translation) {
    $("source-tokens").replaceChildren(...(translation.source_tokens || []).map((t, j) => tokenSpan(t, "src", j)));
    $("target-tokens").replaceChildren(...(translation.target_tokens || []).map((t, i) => tokenSpan(t, "tgt", i)));
  }

  function svg(name, attributes, parent) {
    const element = document.createElementNS(SVG_NS, name);
    for (const [key, value] of Object.entries(attributes || {})) element.setAttribute(key, String(value));
    if (parent) parent.append(element);
    return element;
  }

  function renderHeatmap(translation, weights) {
    // `weights` [T][S]: the matrix to draw (the default view, or the chosen layer and head).
    heatmap.replaceChildren();
    heatmap.classList.remove("has-focus");
    const rows = translation.target_tokens || [];
    const cols = translation.source_tokens || [];
    const note = $("heatmap-note");
    if (!weights || !rows.length || !cols.length) {
      heatmap.setAttribute("hidden", "");
      note.textContent = translation.attention === null || translation.attention === undefined
        ? "This model has no attention to show." : "Nothing to draw: the text is empty.";
      return;
    }
    heatmap.removeAttribute("hidden");
    note.textContent = "";
    const longest = Math.max(rows.length, cols.length);
    const cellHeight = longest > 40 ? 18 : longest > 20 ? 28 : 40;

    // Measure the labels, then lay out: target labels on the left, source labels on top. Columns widen to the widest
    // source label so that labels stay horizontal (Hangul read sideways is hard to read); only when that would not
    // fit the page do the columns stay square and the labels slant.
    const probe = svg("text", {}, heatmap);
    const width = (token) => { probe.textContent = token; return probe.getComputedTextLength(); };
    const rowWidth = Math.max(...rows.map(width));
    const colWidth = Math.max(...cols.map(width));
    probe.remove();
    const left = Math.ceil(rowWidth) + 16;
    const room = Math.max(480, (heatmap.parentElement.clientWidth || 960) - left - 8);
    const widened = Math.max(cellHeight, Math.ceil(colWidth) + 12);
    const upright = cols.length * widened <= room;
    const cellWidth = upright ? widened : cellHeight;
    const slant = Math.SQRT1_2; // 45°
    const top = upright ? 26 : Math.ceil(colWidth * slant) + 18;
    const right = upright ? 4 : Math.ceil(colWidth * slant) + 8;
    const totalWidth = left + cols.length * cellWidth + right;
    const totalHeight = top + rows.length * cellHeight + 4;
    heatmap.setAttribute("width", totalWidth);
    heatmap.setAttribute("height", totalHeight);
    heatmap.setAttribute("viewBox", `0 0 ${totalWidth} ${totalHeight}`);
    heatmap.dataset.rows = String(rows.length);
    heatmap.dataset.cols = String(cols.length);
    // The SVG is one image to assistive technology; the token lists above it are the keyboard way in.
    heatmap.setAttribute("aria-label",
      `Attention heatmap${viewControls.hidden ? "" : ` (${viewText(chosenView())})`}: ` +
      `${rows.length} target tokens by ${cols.length} source tokens. ` +
      "Focus a token in the lists above to hear what it attends to.");

    const labels = svg("g", { class: "labels" }, heatmap);
    cols.forEach((token, j) => {
      const x = left + j * cellWidth + cellWidth / 2;
      const w = width(token);
      const group = svg("g", { class: "label src", "data-col": j,
        transform: upright ? `translate(${x - w / 2}, ${top - 8})` : `translate(${x}, ${top - 6}) rotate(-45)` },
        labels);
      svg("rect", { class: "label-bg", x: -3, y: -12, width: w + 6, height: 16, rx: 3 }, group);
      svg("text", { x: 0, y: 0 }, group).textContent = token;
    });
    rows.forEach((token, i) => {
      const y = top + i * cellHeight + cellHeight / 2;
      const group = svg("g", { class: "label tgt", "data-row": i, transform: `translate(${left - 8}, ${y})` },
        labels);
      svg("rect", { class: "label-bg", x: -(width(token) + 4), y: -9, width: width(token) + 8, height: 18, rx: 3 },
        group);
      svg("text", { x: 0, y: 0, "text-anchor": "end", "dominant-baseline": "central" }, group).textContent = token;
    });

    const grid = svg("g", { class: "cells" }, heatmap);
    rows.forEach((target, i) => {
      cols.forEach((sourceToken, j) => {
        const w = Number(weights[i] && weights[i][j]) || 0;
        const rect = svg("rect", { class: "cell", "data-row": i, "data-col": j, "data-weight": w.toFixed(4),
          x: left + j * cellWidth, y: top + i * cellHeight, width: cellWidth, height: cellHeight, fill: colour(w) },
          grid);
        svg("title", {}, rect).textContent = `${target} → ${sourceToken}: ${w.toFixed(2)}`;
      });
    });
  }

  // ---- linking tokens ------------------------------------------------------------------------------------------

  function clearFocus() {
    for (const element of result.querySelectorAll(".active, .linked")) {
      element.classList.remove("active", "linked");
      element.style.removeProperty("--w");
    }
    heatmap.classList.remove("has-focus");
    detail.textContent = "";
  }

  function link(selector, weight) {
    for (const element of result.querySelectorAll(selector)) {
      element.classList.add("linked");
      element.style.setProperty("--w", Math.min(1, Math.max(0, weight)).toFixed(3));
    }
  }

  function strongest(entries) {
    return entries.filter(([, w]) => w >= 0.005).sort((a, b) => b[1] - a[1]).slice(0, 3)
      .map(([token, w]) => `${token} (${w.toFixed(2)})`).join(", ") || "nothing";
  }

  function focusRow(i) {
    const weights = shown[i] || [];
    for (const element of result.querySelectorAll(`.tgt[data-row="${i}"], .cell[data-row="${i}"]`)) {
      element.classList.add("active");
    }
    current.source_tokens.forEach((_, j) => link(`.src[data-col="${j}"]`, weights[j] || 0));
    detail.textContent = `Target ${current.target_tokens[i]} attends to ` +
      strongest(current.source_tokens.map((token, j) => [token, weights[j] || 0])) + ".";
  }

  function focusColumn(j) {
    for (const element of result.querySelectorAll(`.src[data-col="${j}"], .cell[data-col="${j}"]`)) {
      element.classList.add("active");
    }
    current.target_tokens.forEach((_, i) => link(`.tgt[data-row="${i}"]`, (shown[i] || [])[j] || 0));
    detail.textContent = `Source ${current.source_tokens[j]} is attended to by ` +
      strongest(current.target_tokens.map((token, i) => [token, (shown[i] || [])[j] || 0])) + ".";
  }

  function onFocus(event) {
    const element = event.target.closest && event.target.closest("[data-row], [data-col]");
    if (!current || !shown || !shown.length || !element || !result.contains(element)) {
      clearFocus();
      return;
    }
    clearFocus();
    heatmap.classList.add("has-focus");
    const row = element.dataset.row, col = element.dataset.col;
    if (row !== undefined && col !== undefined) { // a cell: its target and its source
      focusRow(Number(row));
      result.querySelectorAll(`.src[data-col="${col}"]`).forEach((e) => e.classList.add("active"));
      const w = Number((shown[row] || [])[col]) || 0;
      detail.textContent = `${current.target_tokens[row]} → ${current.source_tokens[col]}: ${w.toFixed(2)}`;
    } else if (row !== undefined) {
      focusRow(Number(row));
    } else {
      focusColumn(Number(col));
    }
  }

  // Legend swatches.
  for (let k = 0; k <= 10; k++) {
    const swatch = document.createElement("span");
    swatch.style.setProperty("--c", colour(k / 10));
    $("legend").append(swatch);
  }

  result.addEventListener("pointerover", onFocus);
  result.addEventListener("focusin", onFocus);
  result.addEventListener("pointerleave", clearFocus);
  result.addEventListener("focusout", (event) => { if (!result.contains(event.relatedTarget)) clearFocus(); });
  layerSelect.addEventListener("change", changeView);
  headSelect.addEventListener("change", changeView);
  form.addEventListener("submit", translate);
  source.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  loadInfo();
})();
