// Calls to the service: every request carries the stored API key, and a 401 asks for one
// and tries again. Paths are relative to the page, so a route prefix in front of the
// service works too.

import { askForKey, getKey } from "./auth";
import type { Job } from "./types";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly detail: string,
  ) {
    super(detail);
  }
}

export function apiUrl(path: string): string {
  return new URL(path, document.baseURI).toString();
}

function authHeaders(init?: HeadersInit): Headers {
  const headers = new Headers(init);
  const key = getKey();
  if (key) headers.set("Authorization", `Bearer ${key}`);
  return headers;
}

/** The `detail` of an error response, in words. */
export async function errorDetail(response: Response): Promise<string> {
  try {
    const body = await response.json();
    return describeDetail(body?.detail) || `${response.status} ${response.statusText}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

function describeDetail(detail: unknown): string {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    // FastAPI's validation errors: one {loc, msg} per invalid value
    return detail
      .map((d) => `${(d?.loc ?? []).slice(1).join(".")}: ${d?.msg ?? ""}`.trim())
      .join("; ");
  }
  return "";
}

/** Why the key dialog opens, after a 401 (or a stream closed with 4401) saying ``detail``. */
export function keyReason(detail: string): string {
  return getKey()
    ? `The service refused the key: ${detail}. Enter another one.`
    : `This service needs an API key (${detail}).`;
}

/** fetch() with the API key; on 401 asks for a key and retries until cancelled. */
export async function api(path: string, init: RequestInit = {}): Promise<Response> {
  for (;;) {
    const response = await fetch(apiUrl(path), { ...init, headers: authHeaders(init.headers) });
    if (response.status !== 401) return response;
    const detail = await errorDetail(response);
    if (!(await askForKey(keyReason(detail)))) throw new ApiError(401, detail);
  }
}

/** GET JSON; an ApiError for any status but 2xx. */
export async function getJson<T>(path: string, signal?: AbortSignal): Promise<T> {
  const response = await api(path, { signal });
  if (!response.ok) throw new ApiError(response.status, await errorDetail(response));
  return (await response.json()) as T;
}

/** Make sure a key is set when the service needs one, before a large upload is sent
 * (the service refuses an upload without a valid key before reading it). */
export async function ensureAccess(): Promise<void> {
  const response = await api("sessions?limit=1");
  if (!response.ok) throw new ApiError(response.status, await errorDetail(response));
}

export interface UploadAnswer {
  status: number;
  body: unknown;
}

/** POST a form with XMLHttpRequest, reporting upload progress (0..1). */
export function upload(
  path: string,
  form: FormData,
  onProgress: (fraction: number) => void,
  signal?: AbortSignal,
): Promise<UploadAnswer> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", apiUrl(path));
    const key = getKey();
    if (key) xhr.setRequestHeader("Authorization", `Bearer ${key}`);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable && event.total > 0) onProgress(event.loaded / event.total);
    });
    xhr.upload.addEventListener("load", () => onProgress(1));
    xhr.addEventListener("load", () => resolve({ status: xhr.status, body: xhr.response }));
    xhr.addEventListener("error", () => reject(new ApiError(0, "the upload failed: network error")));
    xhr.addEventListener("abort", () => reject(new DOMException("upload cancelled", "AbortError")));
    signal?.addEventListener("abort", () => xhr.abort());
    xhr.send(form);
  });
}

/** POST a form with progress; a 401 asks for a key and sends it again. */
export async function uploadWithKey(
  path: string,
  form: FormData,
  onProgress: (fraction: number) => void,
  signal?: AbortSignal,
): Promise<UploadAnswer> {
  for (;;) {
    const answer = await upload(path, form, onProgress, signal);
    if (answer.status !== 401) return answer;
    const detail = describeDetail((answer.body as { detail?: unknown } | null)?.detail);
    if (!(await askForKey(keyReason(detail || "401")))) throw new ApiError(401, detail);
  }
}

/** The error an upload answered with, in words. */
export function answerDetail(answer: UploadAnswer): string {
  const detail = describeDetail((answer.body as { detail?: unknown } | null)?.detail);
  return detail || `the service answered ${answer.status}`;
}

const TERMINAL = new Set(["done", "failed", "cancelled"]);

/**
 * Follow a job's server-sent events (`GET /sessions/{id}/events`) with fetch, which
 * can send the Authorization header (EventSource cannot). Calls ``onJob`` for each
 * state and resolves with the last one; reconnects with Last-Event-ID if the stream
 * drops before the job ends.
 */
export async function followJob(
  id: string,
  onJob: (job: Job) => void,
  signal?: AbortSignal,
): Promise<Job> {
  let lastId: string | null = null;
  let last: Job | null = null;
  for (let attempt = 0; attempt < 20; attempt++) {
    const headers: Record<string, string> = { Accept: "text/event-stream" };
    if (lastId) headers["Last-Event-ID"] = lastId;
    let response: Response;
    try {
      response = await api(`sessions/${id}/events`, { headers, signal });
    } catch (error) {
      if (signal?.aborted || error instanceof ApiError) throw error;
      await pause(1000 * Math.min(attempt + 1, 5), signal);
      continue;
    }
    if (!response.ok || !response.body) {
      throw new ApiError(response.status, await errorDetail(response));
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end: number;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const event = parseEvent(block);
          if (!event) continue;
          if (event.id) lastId = event.id;
          if (event.type === "error") throw new ApiError(503, storeError(event.data));
          last = JSON.parse(event.data) as Job;
          onJob(last);
          if (TERMINAL.has(last.status)) return last;
        }
      }
    } catch (error) {
      if (signal?.aborted || error instanceof ApiError) throw error;
      // the connection dropped: reconnect below
    }
    await pause(1000 * Math.min(attempt + 1, 5), signal);
  }
  throw new ApiError(0, last ? `lost the job's progress (last: ${last.status})` : "no progress");
}

function storeError(data: string): string {
  try {
    return String(JSON.parse(data).detail);
  } catch {
    return data;
  }
}

function parseEvent(block: string): { type: string; data: string; id: string | null } | null {
  let type = "message";
  let id: string | null = null;
  const data: string[] = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue; // keep-alive comments
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") type = value;
    else if (field === "data") data.push(value);
    else if (field === "id") id = value;
  }
  return data.length ? { type, data: data.join("\n"), id } : null;
}

function pause(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(new DOMException("aborted", "AbortError"));
    });
  });
}
