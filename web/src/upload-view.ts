// #/: drop or choose a file, set the options, upload it (with upload progress), and
// open its transcript; as a background job, the job's progress comes by server-sent events.

import { ApiError, answerDetail, ensureAccess, followJob, uploadWithKey } from "./api";
import { h } from "./dom";
import { jobPanel } from "./job-panel";
import { localAudio } from "./session-view";
import type { Job, Session } from "./types";

export function uploadView(main: HTMLElement): () => void {
  const controller = new AbortController();
  let file: File | null = null;

  const input = h("input", { type: "file", id: "file", name: "file", accept: "audio/*,video/*", class: "file-input" });
  const chosen = h("span", { class: "chosen", id: "chosen", "aria-live": "polite" }, "No file chosen");
  const drop = h(
    "div",
    { class: "drop-zone" },
    h("p", { class: "drop-title" }, h("strong", {}, "Drop an audio or video file here")),
    input,
    h("label", { for: "file", class: "button secondary" }, "Choose a file"),
    chosen,
  );
  const check = (id: string, label: string, checked: boolean, hint?: string): HTMLElement =>
    h(
      "div",
      { class: "check" },
      h("input", { type: "checkbox", id, name: id, checked }),
      h("label", { for: id }, label),
      hint ? h("span", { class: "hint", id: `${id}-hint` }, hint) : null,
    );
  const submit = h("button", { type: "submit", class: "primary", disabled: true }, "Transcribe");
  const form = h(
    "form",
    { class: "upload-form", novalidate: true },
    drop,
    h(
      "fieldset",
      { class: "options" },
      h("legend", {}, "Options"),
      h(
        "div",
        { class: "fields" },
        h(
          "div",
          { class: "field" },
          h("label", { for: "language" }, "Language"),
          h("input", { id: "language", name: "language", placeholder: "auto", maxlength: 8, autocomplete: "off", "aria-describedby": "language-hint" }),
          h("span", { class: "hint", id: "language-hint" }, "ISO code such as en; empty detects it"),
        ),
        h(
          "div",
          { class: "field" },
          h("label", { for: "num_speakers" }, "Speakers"),
          h("input", { id: "num_speakers", name: "num_speakers", type: "number", min: 1, max: 50, placeholder: "auto", inputmode: "numeric" }),
        ),
      ),
      check("diarize", "Tell speakers apart", true),
      check("emotion", "Detect emotion", true),
      check("store_audio", "Keep the audio on the server", false, "so the stored session can be played later"),
      check("async", "Run as a background job", false, "progress by stage; best for long recordings"),
    ),
    submit,
  );
  const panelBox = h("div", { class: "panel-box" });
  main.replaceChildren(
    h(
      "section",
      { class: "upload-view" },
      h("h1", { tabindex: -1 }, "Transcribe a recording"),
      h("p", { class: "muted" }, "See who spoke, what was said and how it sounded. Or ", h("a", { href: "#/live" }, "record from the microphone"), "."),
      form,
      panelBox,
    ),
  );

  const choose = (f: File | null): void => {
    file = f;
    chosen.textContent = f ? `${f.name} (${(f.size / 1e6).toFixed(1)} MB)` : "No file chosen";
    submit.disabled = !f;
  };
  input.addEventListener("change", () => choose(input.files?.[0] ?? null));
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "drop"]) drop.addEventListener(type, () => drop.classList.remove("dragging"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const f = (event as DragEvent).dataTransfer?.files?.[0];
    if (f) choose(f);
  });

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!file) return;
    const data = new FormData();
    data.append("file", file, file.name);
    const value = (id: string): string => (form.querySelector(`#${id}`) as HTMLInputElement).value.trim();
    const checked = (id: string): boolean => (form.querySelector(`#${id}`) as HTMLInputElement).checked;
    if (value("language")) data.append("language", value("language"));
    if (value("num_speakers")) data.append("num_speakers", value("num_speakers"));
    data.append("diarize", String(checked("diarize")));
    data.append("emotion", String(checked("emotion")));
    if (checked("store_audio")) data.append("store_audio", "true");
    if (checked("async")) data.append("async", "true");
    void send(file, data);
  });

  const send = async (f: File, data: FormData): Promise<void> => {
    const panel = jobPanel();
    panelBox.replaceChildren(panel.element);
    submit.disabled = true;
    form.setAttribute("aria-busy", "true");
    try {
      await ensureAccess();
      const answer = await uploadWithKey("transcribe", data, (x) => panel.uploading(x), controller.signal);
      let id: string;
      if (answer.status === 202) {
        const job = answer.body as Job;
        panel.update(job);
        const last = await followJob(job.id, (j) => panel.update(j), controller.signal);
        if (last.status !== "done") {
          panel.fail(last.status === "failed" ? `Failed: ${last.detail ?? "unknown error"}` : "The job was cancelled.");
          return;
        }
        id = job.id;
      } else if (answer.status === 200) {
        id = (answer.body as Session).id;
        panel.finished();
      } else {
        panel.fail(`Failed: ${answerDetail(answer)}`);
        return;
      }
      localAudio.set(id, URL.createObjectURL(f));
      location.hash = `#/sessions/${id}`;
    } catch (error) {
      if (controller.signal.aborted) return;
      panel.fail(`Failed: ${error instanceof ApiError || error instanceof Error ? error.message : String(error)}`);
    } finally {
      submit.disabled = !file;
      form.removeAttribute("aria-busy");
    }
  };
  return () => controller.abort();
}
