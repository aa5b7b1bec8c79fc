// A transcript: speaker-coloured segments with emotion chips, the audio player
// (wavesurfer.js over an <audio> element) and the valence/arousal timeline, kept in
// sync: clicking a segment seeks there, the segment being played is highlighted.

import WaveSurfer from "wavesurfer.js";
import RegionsPlugin from "wavesurfer.js/dist/plugins/regions.esm.js";

import { clock, h } from "./dom";
import { speakerColor, speakersOf } from "./speakers";
import { type Timeline, timeline } from "./timeline";
import type { Emotion, Segment, Session } from "./types";

/** The emotion chip: label and confidence; the dimensions in words for screen readers. */
export function emotionChip(emotion: Emotion | null): HTMLElement | null {
  if (!emotion) return null;
  const percent = Math.round(emotion.confidence * 100);
  const dims = `valence ${emotion.valence.toFixed(2)}, arousal ${emotion.arousal.toFixed(2)}, dominance ${emotion.dominance.toFixed(2)}`;
  return h(
    "span",
    { class: `chip emotion emotion-${emotion.label.toLowerCase()}`, title: dims },
    h("span", { class: "sr-only" }, "emotion: "),
    h("span", { class: "emotion-label" }, emotion.label),
    " ",
    h("span", { class: "emotion-confidence" }, `${percent}%`),
    h("span", { class: "sr-only" }, ` (${dims})`),
  );
}

export function speakerChip(speaker: string): HTMLElement {
  return h(
    "span",
    { class: "chip speaker", style: `background:${speakerColor(speaker)}` },
    h("span", { class: "sr-only" }, "speaker "),
    h("span", { class: "speaker-label" }, speaker),
  );
}

/** One segment as a list item; ``onSeek`` makes its time a button that seeks there. */
export function segmentItem(segment: Segment, onSeek?: (segment: Segment) => void): HTMLLIElement {
  const time = onSeek
    ? h(
        "button",
        { type: "button", class: "time seek", "aria-label": `Play from ${clock(segment.start_ms)}` },
        clock(segment.start_ms),
      )
    : h("span", { class: "time" }, clock(segment.start_ms));
  const item = h(
    "li",
    {
      class: "segment",
      "data-segment-id": segment.id,
      "data-speaker": segment.speaker,
      "data-start-ms": segment.start_ms,
      "data-end-ms": segment.end_ms,
      style: `--speaker:${speakerColor(segment.speaker)}`,
    },
    h("div", { class: "segment-head" }, time, speakerChip(segment.speaker), emotionChip(segment.emotion)),
    h("p", { class: "text" }, segment.text),
  );
  if (onSeek) {
    time.addEventListener("click", () => onSeek(segment));
    // a click anywhere on the segment seeks too (the time button is the keyboard's way)
    item.addEventListener("click", (event) => {
      if (event.target !== time && !window.getSelection()?.toString()) onSeek(segment);
    });
  }
  return item;
}

export class TranscriptView {
  readonly element: HTMLElement;
  private readonly list: HTMLOListElement;
  private readonly playerBox: HTMLElement;
  private readonly items = new Map<string, HTMLLIElement>();
  private wave: WaveSurfer | null = null;
  private chart: Timeline | null = null;
  private current: Segment | null = null;

  constructor(
    readonly session: Session,
    actions: HTMLElement,
  ) {
    const speakers = speakersOf(session.segments);
    this.playerBox = h("section", { class: "player", "aria-label": "Audio" }, h("p", { class: "muted" }, "Loading the audio…"));
    this.list = h("ol", { class: "segments", "aria-label": "Transcript segments" });
    for (const segment of session.segments) {
      const item = segmentItem(segment, (s) => this.seek(s));
      this.items.set(segment.id, item);
      this.list.appendChild(item);
    }
    const chartBox = h("div", { class: "chart", role: "img", "aria-label": "Valence (solid) and arousal (dashed) of each segment over time, one colour per speaker; each segment below lists them too" });
    const meta = [
      session.language ? `language ${session.language}` : "",
      clock(session.duration_ms),
      `${speakers.length} speaker${speakers.length === 1 ? "" : "s"}`,
      `${session.segments.length} segment${session.segments.length === 1 ? "" : "s"}`,
    ].filter(Boolean);
    this.element = h(
      "article",
      { class: "transcript-view", "data-session-id": session.id },
      h(
        "header",
        { class: "view-head" },
        h("h1", { tabindex: -1 }, session.filename),
        h("p", { class: "muted meta" }, meta.join(" · ")),
        actions,
      ),
      this.playerBox,
      h("ul", { class: "legend", "aria-label": "Speakers" }, ...speakers.map((s) => h("li", {}, speakerChip(s)))),
      h(
        "section",
        { class: "timeline", "aria-labelledby": "timeline-title" },
        h("h2", { id: "timeline-title" }, "Valence and arousal"),
        chartBox,
      ),
      h(
        "section",
        { class: "transcript", "aria-labelledby": "transcript-title" },
        h("h2", { id: "transcript-title" }, "Transcript"),
        session.segments.length ? this.list : h("p", { class: "muted" }, "No speech was found."),
      ),
    );
    // the chart needs its width: build it once the element is in the page
    requestAnimationFrame(() => {
      if (!this.element.isConnected) return;
      this.chart = timeline(chartBox, session.segments, session.duration_ms, (t) => this.seekTo(t));
      if (!this.chart) chartBox.replaceWith(h("p", { class: "muted" }, "No emotion was analysed for this session."));
    });
  }

  /** Play ``url`` (an object URL) in the player. */
  attachAudio(url: string): void {
    const audio = h("audio", { controls: true, preload: "auto", "aria-label": `Audio of ${this.session.filename}` });
    const waveform = h("div", { class: "waveform", "aria-hidden": "true" });
    this.playerBox.replaceChildren(waveform, audio);
    const regions = RegionsPlugin.create();
    const wave = WaveSurfer.create({
      container: waveform,
      media: audio,
      url,
      height: 72,
      waveColor: "#9ca3af",
      progressColor: "#374151",
      cursorColor: "#111827",
      normalize: true,
      dragToSeek: true,
      plugins: [regions],
    });
    wave.on("decode", () => {
      for (const s of this.session.segments) {
        regions.addRegion({
          start: s.start_ms / 1000,
          end: s.end_ms / 1000,
          color: `${speakerColor(s.speaker)}33`,
          drag: false,
          resize: false,
        });
      }
    });
    wave.on("timeupdate", (t) => this.follow(t));
    wave.on("error", () => this.noAudio("The audio could not be played in this browser."));
    this.wave = wave;
  }

  noAudio(message: string): void {
    this.wave?.destroy();
    this.wave = null;
    this.playerBox.replaceChildren(h("p", { class: "muted no-audio" }, message));
  }

  private seek(segment: Segment): void {
    this.highlight(segment, false);
    this.seekTo(segment.start_ms / 1000);
  }

  private seekTo(seconds: number): void {
    if (this.wave) this.wave.setTime(seconds);
    else this.follow(seconds);
  }

  /** Highlight the segment at ``seconds``: the current one while it still holds it. */
  private follow(seconds: number): void {
    this.chart?.setTime(seconds);
    const ms = seconds * 1000;
    const holds = (s: Segment): boolean => ms >= s.start_ms - 5 && ms < s.end_ms;
    if (this.current && holds(this.current)) return;
    const next = this.session.segments.find(holds) ?? null;
    this.highlight(next, this.wave?.isPlaying() ?? false);
  }

  private highlight(segment: Segment | null, scroll: boolean): void {
    if (segment === this.current) return;
    if (this.current) {
      const old = this.items.get(this.current.id);
      old?.classList.remove("current");
      old?.removeAttribute("aria-current");
    }
    this.current = segment;
    if (!segment) return;
    const item = this.items.get(segment.id);
    item?.classList.add("current");
    item?.setAttribute("aria-current", "true");
    if (scroll) item?.scrollIntoView({ block: "nearest", behavior: "smooth" });
  }

  destroy(): void {
    this.wave?.destroy();
    this.chart?.destroy();
  }
}
