// Progress of an upload and of its job: a progress bar and the states it went through.

import { h } from "./dom";
import type { Job } from "./types";

export interface JobPanel {
  element: HTMLElement;
  uploading(fraction: number): void;
  update(job: Job): void;
  /** A synchronous upload's answer came: done. */
  finished(): void;
  fail(message: string): void;
}

export function jobPanel(): JobPanel {
  const label = h("span", { id: "progress-label" }, "Uploading");
  const bar = h("progress", { max: 1, value: 0, "aria-labelledby": "progress-label", class: "progress" });
  const stages = h("ol", { class: "stages", "aria-label": "Job states" });
  const message = h("p", { class: "status-line", role: "status", "aria-live": "polite" });
  const element = h("section", { class: "job-panel", "aria-label": "Progress" }, h("div", { class: "progress-row" }, label, bar), stages, message);
  let lastStep = "";
  return {
    element,
    uploading(fraction) {
      label.textContent = `Uploading ${Math.round(fraction * 100)}%`;
      bar.value = fraction;
      element.dataset.phase = "upload";
      if (fraction >= 1) message.textContent = "Uploaded; transcribing…";
    },
    update(job) {
      element.dataset.phase = job.status;
      bar.value = job.status === "done" ? 1 : job.progress;
      const percent = Math.round(bar.value * 100);
      const step = job.status === "running" && job.stage ? `running: ${job.stage}` : job.status;
      label.textContent = job.status === "running" ? `Transcribing ${percent}%` : cap(job.status);
      if (step !== lastStep) {
        lastStep = step;
        stages.appendChild(h("li", { "data-status": job.status, "data-stage": job.stage ?? "" }, step));
        message.textContent = job.status === "failed" ? `Failed: ${job.detail ?? "unknown error"}` : `${cap(step)} (${percent}%)`;
      }
    },
    finished() {
      bar.value = 1;
      label.textContent = "Done";
      element.dataset.phase = "done";
      stages.appendChild(h("li", { "data-status": "done", "data-stage": "" }, "done"));
      message.textContent = "Done";
    },
    fail(text) {
      element.dataset.phase = "failed";
      message.textContent = text;
      message.classList.add("error");
    },
  };
}

function cap(s: string): string {
  return s.charAt(0).toUpperCase() + s.slice(1);
}
