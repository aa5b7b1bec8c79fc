// #/sessions/<id>: a stored session (or its job's progress until it is done), with the
// player, downloads and delete.

import { ApiError, api, errorDetail, followJob } from "./api";
import { announce, h, saveBlob } from "./dom";
import { jobPanel } from "./job-panel";
import { TranscriptView } from "./transcript";
import type { Job, Session } from "./types";

/** Object URLs of audio this page has (a file just uploaded, a recording just made),
 * by session id: played without asking the service for it. */
export const localAudio = new Map<string, string>();

export function sessionView(main: HTMLElement, id: string): () => void {
  const controller = new AbortController();
  let view: TranscriptView | null = null;
  const heading = h("h1", { tabindex: -1 }, "Session");
  const status = h("p", { role: "status", class: "muted" }, "Loading…");
  main.replaceChildren(h("section", { class: "session-loading" }, heading, status));

  const load = async (): Promise<void> => {
    const response = await api(`sessions/${id}`, { signal: controller.signal });
    if (response.status === 202) {
      // its job is still queued or running: show its progress, then the session
      const job = (await response.json()) as Job;
      heading.textContent = job.filename;
      const panel = jobPanel();
      status.replaceWith(panel.element);
      panel.update(job);
      const last = await followJob(id, (j) => panel.update(j), controller.signal);
      if (last.status !== "done") return;
      return load();
    }
    if (!response.ok) {
      const detail = await errorDetail(response);
      status.textContent =
        response.status === 404 ? `No such session: ${detail}` : `Could not load the session: ${detail}`;
      status.classList.add("error");
      return;
    }
    const session = (await response.json()) as Session;
    view = new TranscriptView(session, actions(session, controller.signal));
    main.replaceChildren(view.element);
    (view.element.querySelector("h1") as HTMLElement).focus();
    await playAudio(view, session, controller.signal);
  };
  load().catch((error: unknown) => {
    if (controller.signal.aborted) return;
    status.textContent = `Could not load the session: ${error instanceof Error ? error.message : String(error)}`;
    status.classList.add("error");
  });
  return () => {
    controller.abort();
    view?.destroy();
  };
}

const NOT_KEPT =
  "The service did not keep this session's audio (upload or record with “Keep the audio on the server” to play it here later).";

async function playAudio(view: TranscriptView, session: Session, signal: AbortSignal): Promise<void> {
  const id = session.id;
  const local = localAudio.get(id);
  if (local) {
    view.attachAudio(local);
    return;
  }
  // kept by the service only when the upload or stream asked for it (store_audio=true)
  if (session.has_audio === false) {
    view.noAudio(NOT_KEPT);
    return;
  }
  const response = await api(`sessions/${id}/audio`, { signal });
  if (response.ok) {
    const url = URL.createObjectURL(await response.blob());
    localAudio.set(id, url);
    view.attachAudio(url);
  } else if (response.status === 404) {
    view.noAudio(NOT_KEPT);
  } else {
    view.noAudio(`The audio could not be loaded: ${await errorDetail(response)}`);
  }
}

function actions(session: Session, signal: AbortSignal): HTMLElement {
  const stem = session.filename.replace(/\.[^.]+$/, "") || session.id;
  const download = async (ext: "srt" | "vtt"): Promise<void> => {
    const response = await api(`sessions/${session.id}/${ext}`, { signal });
    if (!response.ok) throw new ApiError(response.status, await errorDetail(response));
    saveBlob(await response.blob(), `${stem}.${ext}`);
  };
  const button = (label: string, name: string, run: () => Promise<void> | void): HTMLButtonElement => {
    const b = h("button", { type: "button", class: `secondary ${name}` }, label);
    b.addEventListener("click", () => {
      Promise.resolve(run()).catch((error: unknown) =>
        announce(`Failed: ${error instanceof Error ? error.message : String(error)}`),
      );
    });
    return b;
  };
  return h(
    "div",
    { class: "actions", role: "group", "aria-label": "Download or delete" },
    button("SRT", "download-srt", () => download("srt")),
    button("VTT", "download-vtt", () => download("vtt")),
    button("JSON", "download-json", () =>
      saveBlob(new Blob([JSON.stringify(session, null, 2)], { type: "application/json" }), `${stem}.json`),
    ),
    button("Delete", "delete danger", async () => {
      if (!confirm(`Delete “${session.filename}”? This cannot be undone.`)) return;
      const response = await api(`sessions/${session.id}`, { method: "DELETE" });
      if (!response.ok && response.status !== 404) throw new ApiError(response.status, await errorDetail(response));
      announce(`Deleted ${session.filename}`);
      location.hash = "#/sessions";
    }),
  );
}
