// #/sessions: the key's stored sessions, newest first, a page at a time, with open and
// delete.

import { ApiError, api, errorDetail, getJson } from "./api";
import { announce, clock, h, when } from "./dom";
import type { SessionList, SessionSummary } from "./types";

const PAGE = 20;

export function sessionsView(main: HTMLElement): () => void {
  const controller = new AbortController();
  const list = h("ul", { class: "session-list", "aria-label": "Stored sessions" });
  const status = h("p", { class: "muted", role: "status" }, "Loading…");
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "Load more");
  main.replaceChildren(
    h(
      "section",
      { class: "sessions-view" },
      h("div", { class: "view-head" }, h("h1", { tabindex: -1 }, "Sessions"), h("a", { href: "#/", class: "button primary" }, "New transcription")),
      status,
      list,
      more,
    ),
  );
  let cursor: string | null = null;

  const row = (s: SessionSummary): HTMLLIElement => {
    const remove = h("button", { type: "button", class: "secondary danger delete", "aria-label": `Delete ${s.filename}` }, "Delete");
    const item = h(
      "li",
      { class: "session-row", "data-session-id": s.id },
      h(
        "div",
        { class: "session-main" },
        h("a", { href: `#/sessions/${s.id}`, class: "open" }, s.filename),
        h(
          "span",
          { class: "muted" },
          [when(s.created_at), clock(s.duration_ms), `${s.speakers} speaker${s.speakers === 1 ? "" : "s"}`, `${s.segments} segment${s.segments === 1 ? "" : "s"}`, s.language].filter(Boolean).join(" · "),
        ),
      ),
      remove,
    );
    remove.addEventListener("click", async () => {
      if (!confirm(`Delete “${s.filename}”? This cannot be undone.`)) return;
      remove.disabled = true;
      try {
        const response = await api(`sessions/${s.id}`, { method: "DELETE" });
        if (!response.ok && response.status !== 404) throw new ApiError(response.status, await errorDetail(response));
        item.remove();
        announce(`Deleted ${s.filename}`);
        if (!list.children.length && !cursor) status.textContent = "No sessions yet.";
      } catch (error) {
        remove.disabled = false;
        announce(`Could not delete ${s.filename}: ${error instanceof Error ? error.message : String(error)}`);
      }
    });
    return item;
  };

  const load = async (): Promise<void> => {
    more.disabled = true;
    try {
      const query = new URLSearchParams({ limit: String(PAGE) });
      if (cursor) query.set("cursor", cursor);
      const page = await getJson<SessionList>(`sessions?${query}`, controller.signal);
      for (const s of page.sessions) list.appendChild(row(s));
      cursor = page.next_cursor;
      more.hidden = !cursor;
      status.textContent = list.children.length ? `${list.children.length}${cursor ? "+" : ""} session${list.children.length === 1 ? "" : "s"}` : "No sessions yet.";
    } catch (error) {
      if (controller.signal.aborted) return;
      status.textContent = `Could not list the sessions: ${error instanceof Error ? error.message : String(error)}`;
      status.classList.add("error");
    } finally {
      more.disabled = false;
    }
  };
  more.addEventListener("click", () => void load());
  void load();
  return () => controller.abort();
}
