// A small line chart drawn as SVG (no library, no CDN): disk usage points over time.
window.lipsyncdChart = function (points, opts) {
  const w = opts.width || 640, h = opts.height || 200, pad = 36;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("class", "chart");
  if (!points.length) return svg;
  const xs = points.map(p => p[0]), ys = points.map(p => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs) || x0 + 1;
  const yMax = Math.max(100, ...ys);
  const sx = x => pad + (w - 2 * pad) * (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0));
  const sy = y => h - pad - (h - 2 * pad) * (y / yMax);
  const line = (x, y, X, Y, cls) => {
    const l = document.createElementNS(ns, "line");
    l.setAttribute("x1", x); l.setAttribute("y1", y); l.setAttribute("x2", X); l.setAttribute("y2", Y);
    l.setAttribute("class", cls); svg.appendChild(l);
  };
  const text = (x, y, s) => {
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", x); t.setAttribute("y", y); t.textContent = s; svg.appendChild(t);
  };
  line(pad, h - pad, w - pad, h - pad, "axis"); line(pad, pad, pad, h - pad, "axis");
  for (const mark of (opts.marks || [])) { line(pad, sy(mark), w - pad, sy(mark), "mark"); text(2, sy(mark) + 4, mark + "%"); }
  const path = document.createElementNS(ns, "polyline");
  path.setAttribute("points", points.map(p => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" "));
  path.setAttribute("class", "usage");
  svg.appendChild(path);
  text(pad, h - 8, new Date(x0 * 1000).toLocaleString());
  text(w - pad - 140, h - 8, new Date(x1 * 1000).toLocaleString());
  return svg;
};
