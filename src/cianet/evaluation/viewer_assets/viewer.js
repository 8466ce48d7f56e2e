(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("cianet-data").textContent);
  var COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
                "#469990", "#9a6324", "#800000", "#808000", "#000075", "#a9a9a9"];
  var classColors = data.colors || {};
  var $ = function (id) { return document.getElementById(id); };
  var sel = $("class");
  data.labels.forEach(function (lab) {
    var o = document.createElement("option"); o.value = lab; o.textContent = lab; sel.appendChild(o);
  });
  // the overlay PNG's class colours (matplotlib tab10 by box class); other classes from a fixed list
  function colorOf(label) {
    return classColors[label] || COLORS[Math.max(0, data.labels.indexOf(label)) % COLORS.length];
  }
  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function svgEl(tag, attrs) {
    var e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    return e;
  }
  function hexRgb(h) { return [parseInt(h.slice(1, 3), 16), parseInt(h.slice(3, 5), 16), parseInt(h.slice(5, 7), 16)]; }
  function ink(h) { var c = hexRgb(h); return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2] > 150 ? "#000" : "#fff"; }
  var HEAT = (data.colormaps && data.colormaps.heat || ["#000080", "#ff0000"]).map(hexRgb);
  var ATT = (data.colormaps && data.colormaps.attention || ["#000000", "#ffff00"]).map(hexRgb);
  function lut(table, v) {  // v in [0, 1] -> [r, g, b], linear between the stops
    var x = Math.min(Math.max(v, 0), 1) * (table.length - 1), i = Math.min(Math.floor(x), table.length - 2), f = x - i;
    return [0, 1, 2].map(function (c) { return Math.round(table[i][c] * (1 - f) + table[i + 1][c] * f); });
  }
  function drawScale(id, table) {
    var c = $(id); if (!c || !c.getContext) { return; }
    var ctx = c.getContext("2d");
    for (var x = 0; x < c.width; x++) {
      var rgb = lut(table, x / (c.width - 1));
      ctx.fillStyle = "rgb(" + rgb.join(",") + ")"; ctx.fillRect(x, 0, 1, c.height);
    }
  }
  // ------------------------------------------------------------------------------------ grids and regions
  function gridBytes(grid) {
    if (!grid.bytes) {
      var s = atob(grid.data), b = new Uint8Array(s.length);
      for (var i = 0; i < s.length; i++) { b[i] = s.charCodeAt(i); }
      grid.bytes = b;
    }
    return grid.bytes;
  }
  function cellProb(grid, k, r, c) { return gridBytes(grid)[(k * grid.side + r) * grid.side + c] / 255; }
  // Connected regions (8-connectivity, as cianet predict) of the cells of class k with p > t:
  // [{r0, c0, r1, c1 (exclusive), score}], as cianet.inference.predictor.grid_regions.
  function regions(grid, k, t) {
    var n = grid.side, seen = new Uint8Array(n * n), out = [];
    for (var r = 0; r < n; r++) {
      for (var c = 0; c < n; c++) {
        if (seen[r * n + c] || !(cellProb(grid, k, r, c) > t)) { continue; }
        var reg = {r0: r, c0: c, r1: r + 1, c1: c + 1, score: 0}, stack = [[r, c]];
        seen[r * n + c] = 1;
        while (stack.length) {
          var cur = stack.pop(), p = cellProb(grid, k, cur[0], cur[1]);
          reg.score = Math.max(reg.score, p);
          reg.r0 = Math.min(reg.r0, cur[0]); reg.r1 = Math.max(reg.r1, cur[0] + 1);
          reg.c0 = Math.min(reg.c0, cur[1]); reg.c1 = Math.max(reg.c1, cur[1] + 1);
          for (var dr = -1; dr <= 1; dr++) {
            for (var dc = -1; dc <= 1; dc++) {
              var rr = cur[0] + dr, cc = cur[1] + dc;
              if (rr < 0 || cc < 0 || rr >= n || cc >= n || seen[rr * n + cc]) { continue; }
              if (cellProb(grid, k, rr, cc) > t) { seen[rr * n + cc] = 1; stack.push([rr, cc]); }
            }
          }
        }
        out.push(reg);
      }
    }
    return out;
  }
  // a region's cell rectangle -> the bounding box of its mapped corners in the image file's pixels, clipped
  function regionBox(item, run, reg) {
    var a = run.affine, xs = [], ys = [];
    [[reg.c0, reg.r0], [reg.c1, reg.r0], [reg.c0, reg.r1], [reg.c1, reg.r1]].forEach(function (p) {
      xs.push(a[0] * p[0] + a[1] * p[1] + a[2]); ys.push(a[3] * p[0] + a[4] * p[1] + a[5]);
    });
    var x0 = Math.max(0, Math.min.apply(null, xs)), y0 = Math.max(0, Math.min.apply(null, ys));
    var x1 = Math.min(item.width, Math.max.apply(null, xs)), y1 = Math.min(item.height, Math.max.apply(null, ys));
    return (x1 > x0 && y1 > y0) ? {x: x0, y: y0, w: x1 - x0, h: y1 - y0, score: reg.score} : null;
  }
  function runProb(run, lab) { var v = run.probabilities[lab]; return (v === undefined || v === null) ? 0 : v; }
  function regionClasses(item, run, cls) {  // a chosen class; else those found (p >= 0.5) or truly present
    return run.grid.classes.filter(function (lab) {
      if (cls !== "*") { return lab === cls; }
      return runProb(run, lab) >= 0.5 || (item.truth && item.truth.labels.indexOf(lab) >= 0);
    });
  }
  function predictedRegions(item, run, cls, t) {
    var out = [];
    regionClasses(item, run, cls).forEach(function (lab) {
      var k = run.grid.classes.indexOf(lab);
      regions(run.grid, k, t).forEach(function (reg) {
        var b = regionBox(item, run, reg);
        if (b) { b.label = lab; out.push(b); }
      });
    });
    return out;
  }
  function heatCanvas(item, run, cls) {
    var g = run.grid, n = g.side, small = document.createElement("canvas");
    small.width = n; small.height = n;
    var sctx = small.getContext("2d"), img = sctx.createImageData(n, n);
    var ks = cls === "*" ? g.classes.map(function (_, k) { return k; }) : [g.classes.indexOf(cls)];
    if (ks[0] < 0) { return null; }
    for (var r = 0; r < n; r++) {
      for (var c = 0; c < n; c++) {
        var p = 0;
        ks.forEach(function (k) { p = Math.max(p, cellProb(g, k, r, c)); });
        var rgb = lut(HEAT, p), o = 4 * (r * n + c);
        img.data[o] = rgb[0]; img.data[o + 1] = rgb[1]; img.data[o + 2] = rgb[2];
        // transparent where nothing is predicted, so the anatomy shows; never opaque
        img.data[o + 3] = p < data.heat_floor ? 0 : Math.round(255 * Math.min(0.5, 0.1 + 0.45 * p));
      }
    }
    sctx.putImageData(img, 0, 0);
    var f = Math.min(1, 512 / Math.max(item.width, item.height));
    var cv = el("canvas", {"class": "heat", width: Math.max(1, Math.round(item.width * f)),
                           height: Math.max(1, Math.round(item.height * f))});
    var ctx = cv.getContext("2d"), a = run.affine;
    ctx.imageSmoothingEnabled = false;
    ctx.setTransform(f * a[0], f * a[3], f * a[1], f * a[4], f * a[2], f * a[5]);  // grid cell -> image pixel
    ctx.drawImage(small, 0, 0);
    return cv;
  }
  // ------------------------------------------------------------------------------------------- drawing
  function label(svg, item, b, text, sw, cls) {  // a label on a filled background, kept inside the image
    var fs = 4.2 * sw, tw = 0.6 * fs * text.length + 2 * sw, th = fs + 1.5 * sw;  // ~11 px on a 430 px card
    var x = Math.min(Math.max(0, b.x), Math.max(0, item.width - tw));
    var y = b.y - th >= 0 ? b.y - th : Math.min(b.y + (cls === "truth" ? b.h : 0), item.height - th);
    var g = svgEl("g", {"class": cls + " label"});
    g.appendChild(svgEl("rect", {x: x, y: Math.max(0, y), width: tw, height: th, fill: colorOf(b.label),
                                 "fill-opacity": 0.85, "class": "label-bg"}));
    var tx = svgEl("text", {x: x + sw, y: Math.max(0, y) + fs, fill: ink(colorOf(b.label)), "font-size": fs,
                            "font-family": "system-ui,sans-serif"});
    tx.textContent = text; g.appendChild(tx); svg.appendChild(g);
  }
  function iouText(v) { return (v === undefined || v === null) ? "" : " IoU " + v.toFixed(2); }
  function boxesSvg(item, boxes, kind) {
    var svg = svgEl("svg", {viewBox: "0 0 " + item.width + " " + item.height, preserveAspectRatio: "none",
                            "class": kind === "pred" ? "pred-box" : "truth"});
    var sw = Math.max(item.width, item.height) / 150;
    boxes.forEach(function (b) {
      var r = svgEl("rect", {x: b.x, y: b.y, width: b.w, height: b.h, fill: "none", stroke: colorOf(b.label),
                             "stroke-width": sw, "class": "box " + kind, "data-label": b.label});
      if (kind === "truth") { r.setAttribute("stroke-dasharray", (3 * sw) + " " + (2 * sw)); }
      var t = svgEl("title", {});
      t.textContent = b.label + (kind === "pred" ? " score " + b.score.toFixed(2) : iouText(b.iou));
      r.appendChild(t); svg.appendChild(r);
      label(svg, item, b, b.label + (kind === "pred" ? " " + b.score.toFixed(2) : iouText(b.iou)), sw,
            kind === "pred" ? "pred-label" : "truth");
    });
    return svg;
  }
  // An evaluated run's panel: its regions at the slider's threshold, and the true boxes with this run's IoU.
  function runSvg(item, run, cls, t) {
    var svg = svgEl("svg", {viewBox: "0 0 " + item.width + " " + item.height, preserveAspectRatio: "none"});
    var sw = Math.max(item.width, item.height) / 150, regs = predictedRegions(item, run, cls, t);
    if (item.truth) {
      var g = svgEl("g", {"class": "truth"});
      item.truth.boxes.forEach(function (b, i) {
        if (cls !== "*" && b.label !== cls) { return; }
        var r = svgEl("rect", {x: b.x, y: b.y, width: b.w, height: b.h, fill: "none", stroke: colorOf(b.label),
                               "stroke-width": 0.7 * sw, "class": "box truth", "data-label": b.label,
                               "stroke-dasharray": (3 * sw) + " " + (2 * sw)});
        g.appendChild(r);
        var iou = run.ious ? run.ious[i] : null;
        label(g, item, b, "true " + b.label + iouText(iou), 0.8 * sw, "truth");
      });
      svg.appendChild(g);
    }
    regs.forEach(function (b) {
      var r = svgEl("rect", {x: b.x, y: b.y, width: b.w, height: b.h, fill: "none", stroke: colorOf(b.label),
                             "stroke-width": sw, "class": "box region", "data-label": b.label});
      var tt = svgEl("title", {}); tt.textContent = b.label + " region, max cell p " + b.score.toFixed(2);
      r.appendChild(tt); svg.appendChild(r);
      label(svg, item, b, b.label + " " + b.score.toFixed(2), sw, "region-label");
    });
    return {svg: svg, n: regs.length};
  }
  function prob(probs, lab) { var v = probs[lab]; return (v === undefined || v === null) ? 0 : v; }
  function predictionsOf(item) { return item.runs || [item]; }
  function score(item, cls) {  // the highest probability of the class (any class: of all) over the item's runs
    var best = 0;
    predictionsOf(item).forEach(function (p) {
      Object.keys(p.probabilities).forEach(function (l) {
        if (cls === "*" || l === cls) { best = Math.max(best, prob(p.probabilities, l)); }
      });
    });
    return best;
  }
  function panel(item, caption, layers) {
    var p = el("div", {"class": "panel"}), s = el("div", {"class": "stack"});
    var base = item.image || item.overlay;
    if (base) { s.appendChild(el("img", {src: base, alt: item.name, "class": "base"})); }
    else { s.appendChild(el("div", {"class": "missing"}, "image not found")); }
    layers.forEach(function (l) { if (l) { s.appendChild(l); } });
    p.appendChild(s); p.appendChild(el("div", {"class": "cap"}, caption));
    return p;
  }
  function probBars(parent, item, probs, cls, shown) {  // shown: the texts cianet.metrics.format_probability wrote
    var labs = Object.keys(probs).sort(function (a, b) { return prob(probs, b) - prob(probs, a); });
    if (cls !== "*" && cls in probs) { labs = [cls].concat(labs.filter(function (l) { return l !== cls; })); }
    labs.slice(0, item.runs && item.runs.length > 1 ? 3 : 5).forEach(function (lab) {
      var isTrue = item.truth && item.truth.labels.indexOf(lab) >= 0;
      parent.appendChild(el("span", {"class": isTrue ? "true" : ""}, lab));
      var bar = el("div", {"class": "bar"}), fill = el("span", {});
      fill.style.width = (100 * prob(probs, lab)).toFixed(1) + "%"; bar.appendChild(fill);
      parent.appendChild(bar);
      parent.appendChild(el("span", {}, (shown && shown[lab] !== undefined) ? shown[lab] : prob(probs, lab).toFixed(4)));
    });
  }
  function card(item, cls, t) {
    var runs = item.runs || null;
    var c = el("div", {"class": "card" + (runs && runs.length > 1 ? " multi" : "") +
                       (item.domain && item.domain.in_domain === false ? " out-of-domain" : ""),
                       "data-name": item.name, "data-score": score(item, cls).toFixed(4)});
    var h = el("h4", {}, item.name);
    var who = runs ? runs.map(function (r) { return r.run; }).join(" | ") : (item.model || "");
    if (who) { h.appendChild(el("span", {"class": "run"}, " \u00b7 " + (runs ? "run " : "model ") + who)); }
    c.appendChild(h);
    if (item.domain && item.domain.in_domain === false) {
      c.appendChild(el("div", {"class": "ood"}, "out of domain: the model was trained on " +
                       item.domain.training_data + " images only"));
    }
    var panels = el("div", {"class": "panels"});
    if (runs) {
      runs.forEach(function (run) {
        if (!run.grid) {
          panels.appendChild(panel(item, run.run + ": scores only (evaluate the run again for regions)", []));
          return;
        }
        var drawn = runSvg(item, run, cls, t);
        panels.appendChild(panel(item, run.run + ": " + drawn.n + " region" + (drawn.n === 1 ? "" : "s") +
                                 " (cell p > " + t.toFixed(2) + ")", [heatCanvas(item, run, cls), drawn.svg]));
      });
    } else {
      var layers = [];
      var heat = item.heat[cls] || (cls === "*" ? item.heat["*"] : null);
      if (heat) { layers.push(el("img", {src: heat, "class": "layer heat", alt: "heatmap"})); }
      if (item.attention) { layers.push(el("img", {src: item.attention, "class": "layer attention", alt: "attention"})); }
      var shown = item.boxes.filter(function (b) { return cls === "*" || b.label === cls; });
      layers.push(boxesSvg(item, shown, "pred"));
      panels.appendChild(panel(item, "prediction (" + shown.length + " box" + (shown.length === 1 ? "" : "es") + ")",
                               layers));
      if (item.truth) {
        var tb = item.truth.boxes.filter(function (b) { return cls === "*" || b.label === cls; });
        var tp = panel(item, "ground truth: " + (item.truth.labels.join(", ") || "No Finding"),
                       [boxesSvg(item, tb, "truth")]);
        tp.classList.add("truth"); panels.appendChild(tp);
      }
    }
    c.appendChild(panels);
    if (runs && item.truth) {
      c.appendChild(el("div", {"class": "cap truth"}, "ground truth (dashed): " +
                       (item.truth.labels.join(", ") || "No Finding") + "; IoU of each true box with the run's " +
                       "region at cell p > 0.5, as evaluated"));
    }
    var probs = el("div", {"class": "probs"});
    predictionsOf(item).forEach(function (p) {
      if (runs && runs.length > 1) { probs.appendChild(el("span", {"class": "run-name"}, p.run)); }
      probBars(probs, item, p.probabilities, cls, p.shown);
    });
    c.appendChild(probs);
    return c;
  }
  // --------------------------------------------------------------------------------------------- state
  var LAYERS = ["boxes", "heat", "attention", "truth"];
  var cellT = parseFloat($("cell").value);  // kept apart from the slider, whose steps would round a link's value
  function state() {
    return {cls: sel.value, min: parseFloat($("min").value), cell: cellT,
            sort: $("sort").value, truth: $("truth").value};
  }
  function writeHash() {
    var s = state(), hide = LAYERS.filter(function (l) { return !$("layer-" + l).checked; });
    var h = "class=" + encodeURIComponent(s.cls) + "&min=" + s.min + "&cell=" + s.cell + "&sort=" + s.sort +
            "&truth=" + s.truth + "&hide=" + hide.join(",");
    if (window.history && window.history.replaceState) { window.history.replaceState(null, "", "#" + h); }
  }
  function readHash() {
    var h = {};
    window.location.hash.replace(/^#/, "").split("&").forEach(function (kv) {
      var i = kv.indexOf("="); if (i > 0) { h[kv.slice(0, i)] = decodeURIComponent(kv.slice(i + 1)); }
    });
    if (h["class"] && (h["class"] === "*" || data.labels.indexOf(h["class"]) >= 0)) { sel.value = h["class"]; }
    if (h.min !== undefined && !isNaN(parseFloat(h.min))) { $("min").value = h.min; }
    if (h.cell !== undefined && !isNaN(parseFloat(h.cell))) {
      cellT = Math.min(Math.max(parseFloat(h.cell), 0), 1); $("cell").value = cellT;
    }
    if (h.sort) { $("sort").value = h.sort; }
    if (h.truth) { $("truth").value = h.truth; }
    if (h.hide !== undefined) {
      var hide = h.hide.split(",");
      LAYERS.forEach(function (l) { $("layer-" + l).checked = hide.indexOf(l) < 0; });
    }
  }
  function applyLayers() {
    LAYERS.forEach(function (l) { document.body.classList.toggle("hide-" + l, !$("layer-" + l).checked); });
  }
  function render() {
    var s = state(), g = $("gallery");
    $("min-out").textContent = s.min.toFixed(2);
    $("cell-out").textContent = s.cell.toFixed(2);
    var items = data.items.filter(function (it) {
      if (score(it, s.cls) < s.min) { return false; }
      if (s.truth !== "all") {
        if (!it.truth) { return false; }
        var has = s.cls === "*" ? it.truth.labels.length > 0 : it.truth.labels.indexOf(s.cls) >= 0;
        if ((s.truth === "positive") !== has) { return false; }
      }
      return true;
    });
    items.sort(function (a, b) {
      if (s.sort === "name") { return a.name < b.name ? -1 : (a.name > b.name ? 1 : 0); }
      var d = score(a, s.cls) - score(b, s.cls);
      return s.sort === "asc" ? d : -d;
    });
    while (g.firstChild) { g.removeChild(g.firstChild); }
    items.forEach(function (it) { g.appendChild(card(it, s.cls, s.cell)); });
    $("count").textContent = items.length + " of " + data.items.length + " images";
    g.classList.toggle("wide", data.items.some(function (it) { return it.runs && it.runs.length > 1; }));
    applyLayers(); writeHash();
  }
  var models = $("models");
  (data.models || []).forEach(function (m) {
    models.appendChild(el("p", {"class": "model"}, "model " + m.id + " " + m.version + " (" + m.kind + ")" +
      (m.sha256 ? ", sha256 " + m.sha256.slice(0, 12) : "")));
  });
  (data.banners || []).forEach(function (b) { $("banners").appendChild(el("p", {"class": "banner"}, b)); });
  Object.keys(classColors).forEach(function (lab) {
    var s = el("span", {}), sw = el("span", {"class": "swatch"});
    sw.style.borderColor = classColors[lab]; s.appendChild(sw); s.appendChild(document.createTextNode(lab));
    $("legend").appendChild(s);
  });
  drawScale("scale-heat", HEAT); drawScale("scale-attention", ATT);
  data.notes.forEach(function (n) { $("notes").appendChild(el("li", {}, n)); });
  readHash();
  ["input", "change"].forEach(function (ev) {
    $("cell").addEventListener(ev, function () { cellT = parseFloat($("cell").value); });
  });
  ["class", "min", "cell", "sort", "truth", "layer-boxes", "layer-heat", "layer-attention", "layer-truth"].forEach(
    function (id) { $(id).addEventListener("input", render); $(id).addEventListener("change", render); });
  render();
  document.body.setAttribute("data-ready", "1");
})();
