// AudioWorklet: the microphone as 16-bit PCM (mono, at the AudioContext's rate), posted
// to the page in 100 ms chunks. "flush" posts what is left, then "flushed".
class PcmCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.chunk = Math.round(sampleRate / 10);
    this.buffer = new Int16Array(this.chunk);
    this.filled = 0;
    this.port.onmessage = (event) => {
      if (event.data === "flush") {
        this.post();
        this.port.postMessage("flushed");
      }
    };
  }

  post() {
    if (this.filled === 0) return;
    const out = this.buffer.slice(0, this.filled);
    this.port.postMessage(out.buffer, [out.buffer]);
    this.filled = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true;
    const n = channels[0].length;
    for (let i = 0; i < n; i++) {
      let v = 0;
      for (let c = 0; c < channels.length; c++) v += channels[c][i];
      v /= channels.length;
      v = v < -1 ? -1 : v > 1 ? 1 : v;
      this.buffer[this.filled++] = v < 0 ? v * 0x8000 : v * 0x7fff;
      if (this.filled === this.chunk) this.post();
    }
    return true;
  }
}

registerProcessor("pcm-capture", PcmCapture);
