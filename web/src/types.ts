// The service's JSON, as ethostral_serve/schema.py defines it.

export interface Emotion {
  label: string;
  valence: number;
  arousal: number;
  dominance: number;
  confidence: number;
}

export interface Word {
  word: string;
  start_ms: number;
  end_ms: number;
  probability: number;
}

export interface Segment {
  id: string;
  speaker: string;
  start_ms: number;
  end_ms: number;
  text: string;
  emotion: Emotion | null;
  words?: Word[];
}

export interface Session {
  id: string;
  filename: string;
  language: string;
  duration_ms: number;
  created_at: string;
  segments: Segment[];
  /** its audio was kept (store_audio): GET /sessions/{id}/audio plays it */
  has_audio?: boolean;
}

export interface SessionSummary {
  id: string;
  filename: string;
  language: string;
  duration_ms: number;
  created_at: string;
  speakers: number;
  segments: number;
}

export interface SessionList {
  sessions: SessionSummary[];
  next_cursor: string | null;
}

export type JobStatus = "queued" | "running" | "done" | "failed" | "cancelled";

export interface Job {
  id: string;
  status: JobStatus;
  stage: string | null;
  progress: number;
  detail: string | null;
  status_code: number | null;
  filename: string;
  created_at: string;
  updated_at: string;
  attempts: number;
}

/** A live stream event (WS /transcribe/stream). */
export type StreamEvent =
  | {
      type: "partial" | "final";
      segment_id: string;
      speaker: string;
      text: string;
      start_ms: number;
      end_ms: number;
      emotion: Emotion | null;
    }
  | { type: "session"; session_id: string }
  | { type: "error"; detail: string; session_id?: string };
