// One colour per speaker (s0, s1, ...), dark enough for white text on it (WCAG AA).

const PALETTE = [
  "#1d4ed8", // blue
  "#b91c1c", // red
  "#047857", // green
  "#7c3aed", // violet
  "#b45309", // amber
  "#0e7490", // cyan
  "#be185d", // pink
  "#4d7c0f", // olive
];

/** The colour of a speaker label such as "s2" (others hashed onto the palette). */
export function speakerColor(speaker: string): string {
  const n = /^s(\d+)$/.exec(speaker);
  let index: number;
  if (n) index = Number(n[1]);
  else index = [...speaker].reduce((acc, c) => (acc * 31 + c.charCodeAt(0)) >>> 0, 7);
  return PALETTE[index % PALETTE.length];
}

/** Speakers in order of first appearance. */
export function speakersOf(segments: { speaker: string }[]): string[] {
  return [...new Set(segments.map((s) => s.speaker))];
}
