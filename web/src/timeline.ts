// Valence and arousal over time, one colour per speaker (uPlot): solid valence, dashed
// arousal, one point per segment at its middle. Clicking the chart seeks the player.

import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

import { speakerColor, speakersOf } from "./speakers";
import type { Segment } from "./types";

export interface Timeline {
  /** Move the playhead line to ``seconds``. */
  setTime(seconds: number): void;
  destroy(): void;
}

const HEIGHT = 200;

export function timeline(
  container: HTMLElement,
  segments: Segment[],
  durationMs: number,
  onSeek: (seconds: number) => void,
): Timeline | null {
  const scored = segments.filter((s) => s.emotion !== null);
  if (scored.length === 0) return null;
  const speakers = speakersOf(scored);
  const xs = [...new Set(scored.map((s) => (s.start_ms + s.end_ms) / 2000))].sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  const data: (number | null)[][] = [xs];
  const series: uPlot.Series[] = [{ label: "time (s)", value: (_u, v) => (v == null ? "–" : `${v.toFixed(1)} s`) }];
  for (const speaker of speakers) {
    const valence: (number | null)[] = xs.map(() => null);
    const arousal: (number | null)[] = xs.map(() => null);
    for (const s of scored) {
      if (s.speaker !== speaker || !s.emotion) continue;
      const i = index.get((s.start_ms + s.end_ms) / 2000) as number;
      valence[i] = s.emotion.valence;
      arousal[i] = s.emotion.arousal;
    }
    const color = speakerColor(speaker);
    const fmt = (_u: uPlot, v: number | null): string => (v == null ? "–" : v.toFixed(2));
    data.push(valence, arousal);
    series.push(
      { label: `${speaker} valence`, stroke: color, width: 2, spanGaps: true, value: fmt, points: { size: 6 } },
      { label: `${speaker} arousal`, stroke: color, width: 2, dash: [6, 4], spanGaps: true, value: fmt, points: { size: 6 } },
    );
  }
  let playhead = -1;
  const width = Math.max(240, container.clientWidth || 600);
  const plot = new uPlot(
    {
      width,
      height: HEIGHT,
      series,
      scales: {
        x: { time: false, range: [0, Math.max(durationMs / 1000, xs[xs.length - 1] ?? 1)] },
        y: { range: [-1, 1] },
      },
      axes: [
        { label: "seconds", size: 40 },
        { label: "score (−1 to 1)", size: 50, values: (_u, ticks) => ticks.map((t) => t.toFixed(1)) },
      ],
      cursor: { drag: { x: false, y: false } },
      legend: { live: true },
      hooks: {
        draw: [
          (u) => {
            if (playhead < 0) return;
            const x = Math.round(u.valToPos(playhead, "x", true));
            const ctx = u.ctx;
            ctx.save();
            ctx.strokeStyle = "#111827";
            ctx.lineWidth = 2 * devicePixelRatio;
            ctx.beginPath();
            ctx.moveTo(x, u.bbox.top);
            ctx.lineTo(x, u.bbox.top + u.bbox.height);
            ctx.stroke();
            ctx.restore();
          },
        ],
      },
    },
    data as uPlot.AlignedData,
    container,
  );
  const over = plot.over;
  const click = (): void => {
    const left = plot.cursor.left ?? -1;
    if (left >= 0) onSeek(Math.max(0, plot.posToVal(left, "x")));
  };
  over.addEventListener("click", click);
  const resize = new ResizeObserver(() => {
    const w = container.clientWidth;
    if (w > 0 && Math.abs(w - plot.width) > 1) plot.setSize({ width: w, height: HEIGHT });
  });
  resize.observe(container);
  return {
    setTime(seconds: number) {
      if (Math.abs(seconds - playhead) < 0.05) return;
      playhead = seconds;
      plot.redraw(false, false);
    },
    destroy() {
      resize.disconnect();
      over.removeEventListener("click", click);
      plot.destroy();
    },
  };
}
