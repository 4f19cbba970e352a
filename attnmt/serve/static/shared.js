// What both pages of attnmt (the translator, app.js; the lab, lab.js) draw the same way: one colour scale for
// attention weights, and sentencepiece's word-start piece shown as a light "·" (as the PNG heatmaps show it).
"use strict";

window.attnmtShared = (() => {
  // Blues, from light to dark: a weight w in [0, 1] → a colour.
  const STOPS = [[247, 251, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]];
  function colour(w) {
    const x = Math.min(1, Math.max(0, Number(w) || 0)) * (STOPS.length - 1);
    const i = Math.min(STOPS.length - 2, Math.floor(x));
    const f = x - i;
    const c = STOPS[i].map((v, k) => Math.round(v + f * (STOPS[i + 1][k] - v)));
    return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
  }
  const shownToken = (token) => token.replace(/\u2581/g, "\u00b7"); // ▁ (a word starts here) → ·
  return Object.freeze({ colour, shownToken });
})();
