// #/live: the microphone streamed over WS /transcribe/stream as 16-bit PCM from an
// AudioWorklet. Partials show while an utterance is spoken (same segment_id, text may
// change) and are replaced by its final; after "stop" the service stores the session.

import workletUrl from "./pcm-worklet.js?url";

import { apiUrl, keyReason } from "./api";
import { askForKey, getKey } from "./auth";
import { clock, h } from "./dom";
import { localAudio } from "./session-view";
import { segmentItem } from "./transcript";
import type { StreamEvent } from "./types";

const MAX_LOCAL_S = 1800; // keep at most this much of a recording to play back here

const CLOSE_REASONS: Record<number, string> = {
  1003: "the service did not understand a message",
  1007: "the audio was not valid",
  1008: "the stream was refused",
  1009: "a frame was too large",
  1011: "the service failed",
  1013: "the service is busy or a part of it is unavailable; try again shortly",
  4401: "an API key is needed",
  4429: "the API key is over a quota",
};

interface Recording {
  stop(): Promise<void>;
  abort(): void;
}

export function liveView(main: HTMLElement): () => void {
  let recording: Recording | null = null;
  const button = h("button", { type: "button", class: "primary record", "aria-pressed": "false" }, "Start recording");
  const status = h("p", { class: "status-line live-status", role: "status" }, "Press Start, allow the microphone, and speak.");
  const list = h("ol", { class: "segments live-segments", "aria-label": "Live transcript" });
  const announcer = h("div", { class: "sr-only", id: "live-announce", "aria-live": "polite", "aria-atomic": "false" });
  const stored = h("p", { class: "stored" });
  const language = h("input", { id: "live-language", placeholder: "auto", maxlength: 8, autocomplete: "off" });
  const diarize = h("input", { type: "checkbox", id: "live-diarize", checked: true });
  const emotion = h("input", { type: "checkbox", id: "live-emotion", checked: true });
  const storeAudio = h("input", { type: "checkbox", id: "live-store-audio", "aria-describedby": "live-store-audio-hint" });
  main.replaceChildren(
    h(
      "section",
      { class: "live-view" },
      h("h1", { tabindex: -1 }, "Live transcription"),
      h(
        "fieldset",
        { class: "options" },
        h("legend", {}, "Options"),
        h("div", { class: "fields" }, h("div", { class: "field" }, h("label", { for: "live-language" }, "Language"), language)),
        h("div", { class: "check" }, diarize, h("label", { for: "live-diarize" }, "Tell speakers apart")),
        h("div", { class: "check" }, emotion, h("label", { for: "live-emotion" }, "Detect emotion")),
        h(
          "div",
          { class: "check" },
          storeAudio,
          h("label", { for: "live-store-audio" }, "Keep the audio on the server"),
          h("span", { class: "hint", id: "live-store-audio-hint" }, "so the stored session can be played later"),
        ),
      ),
      h("div", { class: "record-row" }, button, status),
      stored,
      list,
      announcer,
    ),
  );

  const setIdle = (): void => {
    recording = null;
    button.textContent = "Start recording";
    button.setAttribute("aria-pressed", "false");
    button.disabled = false;
  };

  button.addEventListener("click", async () => {
    if (recording) {
      button.disabled = true;
      status.textContent = "Finishing: the last words are being transcribed…";
      await recording.stop();
      return;
    }
    list.replaceChildren();
    stored.replaceChildren();
    button.disabled = true;
    try {
      recording = await record({
        params: {
          language: language.value.trim(),
          diarize: String(diarize.checked),
          emotion: String(emotion.checked),
          store_audio: storeAudio.checked ? "true" : "", // sent only when asked
        },
        list,
        announcer,
        onStatus: (text) => (status.textContent = text),
        onSent: (ms) => (status.dataset.sentMs = String(Math.round(ms))),
        onSession: (id) => {
          stored.replaceChildren("Stored as a session: ", h("a", { href: `#/sessions/${id}`, class: "open-session" }, "open it"), ".");
        },
        onEnd: async (code, reason) => {
          setIdle();
          if (code === 4401 && (await askForKey(keyReason(reason)))) {
            status.textContent = "Key saved. Press Start to record.";
          }
        },
      });
      button.textContent = "Stop";
      button.setAttribute("aria-pressed", "true");
      button.disabled = false;
    } catch (error) {
      setIdle();
      status.textContent = `Could not start: ${error instanceof Error ? error.message : String(error)}`;
    }
  });
  return () => recording?.abort();
}

interface RecordOptions {
  params: Record<string, string>;
  list: HTMLOListElement;
  announcer: HTMLElement;
  onStatus(text: string): void;
  /** How much audio has been sent so far. */
  onSent(ms: number): void;
  onSession(id: string): void;
  onEnd(code: number, reason: string): void;
}

async function record(o: RecordOptions): Promise<Recording> {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new Error("this browser gives no microphone here (the page needs https or localhost)");
  }
  // raw audio: the speech models do better without the browser's call processing
  const media = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  // run the audio graph at the microphone's own rate (48 kHz, usually): nothing is
  // resampled in the browser, and the service is told that rate
  const rate = media.getAudioTracks()[0]?.getSettings().sampleRate;
  let ctx: AudioContext;
  try {
    ctx = rate ? new AudioContext({ sampleRate: rate }) : new AudioContext();
  } catch {
    ctx = new AudioContext();
  }
  const release = (): void => {
    for (const track of media.getTracks()) track.stop();
    void ctx.close();
  };
  try {
    await ctx.audioWorklet.addModule(workletUrl);
  } catch (error) {
    release();
    throw error;
  }
  const source = ctx.createMediaStreamSource(media);
  const capture = new AudioWorkletNode(ctx, "pcm-capture");
  const mute = ctx.createGain();
  mute.gain.value = 0; // the node must reach the destination to be run; nothing is heard
  source.connect(capture).connect(mute).connect(ctx.destination);

  const query = new URLSearchParams({ sample_rate: String(ctx.sampleRate), encoding: "pcm_s16le", filename: `microphone-${stamp()}.wav` });
  for (const [k, v] of Object.entries(o.params)) if (v) query.set(k, v);
  const url = new URL(apiUrl(`transcribe/stream?${query}`));
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const key = getKey();
  const ws = key ? new WebSocket(url, ["token", key]) : new WebSocket(url);
  ws.binaryType = "arraybuffer";

  const pending: ArrayBuffer[] = [];
  const kept: Int16Array[] = [];
  let keptSamples = 0;
  let sentSamples = 0;
  let sessionId: string | null = null;
  let stopping = false;
  o.onStatus("Connecting…");

  capture.port.onmessage = (event: MessageEvent) => {
    if (!(event.data instanceof ArrayBuffer)) return;
    const pcm = new Int16Array(event.data);
    if (keptSamples < MAX_LOCAL_S * ctx.sampleRate) {
      kept.push(pcm);
      keptSamples += pcm.length;
    }
    if (ws.readyState === WebSocket.OPEN) {
      ws.send(event.data);
      sentSamples += pcm.length;
      o.onSent((1000 * sentSamples) / ctx.sampleRate);
      if (!stopping) o.onStatus(`Listening at ${ctx.sampleRate / 1000} kHz — ${clock((1000 * sentSamples) / ctx.sampleRate)}`);
    } else if (ws.readyState === WebSocket.CONNECTING) {
      pending.push(event.data);
    }
  };
  ws.addEventListener("open", () => {
    for (const chunk of pending.splice(0)) {
      ws.send(chunk);
      sentSamples += chunk.byteLength / 2;
    }
    o.onStatus("Listening…");
  });
  ws.addEventListener("message", (event: MessageEvent) => {
    if (typeof event.data !== "string") return;
    const message = JSON.parse(event.data) as StreamEvent;
    if (message.type === "partial" || message.type === "final") {
      show(o.list, message);
      if (message.type === "final") o.announcer.append(h("p", {}, `${message.speaker}: ${message.text}`));
    } else if (message.type === "session") {
      sessionId = message.session_id;
      if (kept.length) localAudio.set(sessionId, URL.createObjectURL(wav(kept, ctx.sampleRate)));
      o.onSession(sessionId);
    } else if (message.type === "error") {
      o.onStatus(`Stopped: ${message.detail}`);
      if (message.session_id) {
        sessionId = message.session_id;
        o.onSession(message.session_id);
      }
    }
  });
  let ended: () => void = () => {};
  const closed = new Promise<void>((resolve) => (ended = resolve));
  ws.addEventListener("close", (event: CloseEvent) => {
    release();
    if (event.code === 1000) o.onStatus(sessionId ? "Done." : "The stream ended.");
    else {
      const why = event.reason || CLOSE_REASONS[event.code] || "the connection was lost";
      o.onStatus(`Stopped (${event.code}): ${why}`);
    }
    o.onEnd(event.code, event.reason || CLOSE_REASONS[event.code] || "");
    ended();
  });

  return {
    async stop() {
      if (stopping) return closed;
      stopping = true;
      // send the audio still in the worklet, then "stop": the service finalises the rest
      await new Promise<void>((resolve) => {
        const previous = capture.port.onmessage;
        capture.port.onmessage = (event: MessageEvent) => {
          if (event.data === "flushed") resolve();
          else previous?.call(capture.port, event);
        };
        capture.port.postMessage("flush");
      });
      source.disconnect();
      for (const track of media.getTracks()) track.stop();
      if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "stop" }));
      else ws.close();
      return closed;
    },
    abort() {
      // leaving the page: ask the service to finish; it stores the session either way
      if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "stop" }));
      release();
    },
  };
}

/** Show a partial or final in place: same segment_id, same element. Partials count up in
 * data-partials, so a final shows how many drafts it replaced. */
function show(list: HTMLOListElement, e: Extract<StreamEvent, { type: "partial" | "final" }>): void {
  const old = list.querySelector<HTMLLIElement>(`li[data-segment-id="${CSS.escape(e.segment_id)}"]`);
  if (old?.classList.contains("final") && e.type === "partial") return; // a late draft
  const item = segmentItem({ id: e.segment_id, speaker: e.speaker, start_ms: e.start_ms, end_ms: e.end_ms, text: e.text, emotion: e.emotion });
  const partials = Number(old?.dataset.partials ?? 0) + (e.type === "partial" ? 1 : 0);
  item.dataset.partials = String(partials);
  item.classList.add(e.type);
  if (e.type === "partial") item.setAttribute("aria-busy", "true");
  if (old) {
    old.replaceWith(item);
    return;
  }
  const after = [...list.children].find((li) => Number((li as HTMLElement).dataset.startMs) > e.start_ms);
  list.insertBefore(item, after ?? null);
  item.scrollIntoView({ block: "nearest" });
}

function stamp(): string {
  return new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-");
}

/** 16-bit mono PCM chunks as a WAV file. */
function wav(chunks: Int16Array[], rate: number): Blob {
  const samples = chunks.reduce((n, c) => n + c.length, 0);
  const header = new DataView(new ArrayBuffer(44));
  const text = (offset: number, s: string): void => {
    for (let i = 0; i < s.length; i++) header.setUint8(offset + i, s.charCodeAt(i));
  };
  text(0, "RIFF");
  header.setUint32(4, 36 + samples * 2, true);
  text(8, "WAVE");
  text(12, "fmt ");
  header.setUint32(16, 16, true);
  header.setUint16(20, 1, true); // PCM
  header.setUint16(22, 1, true); // mono
  header.setUint32(24, rate, true);
  header.setUint32(28, rate * 2, true);
  header.setUint16(32, 2, true);
  header.setUint16(34, 16, true);
  text(36, "data");
  header.setUint32(40, samples * 2, true);
  return new Blob([header.buffer, ...chunks.map((c) => c.buffer as ArrayBuffer)], { type: "audio/wav" });
}
