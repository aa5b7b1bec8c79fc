// The web app: hash routes (#/, #/live, #/sessions, #/sessions/<id>) so no page path
// collides with the API's (/sessions, /transcribe).

import "./style.css";

import { askForKey, getKey, setKey, updateKeyButton } from "./auth";
import { h } from "./dom";
import { liveView } from "./live-view";
import { sessionView } from "./session-view";
import { sessionsView } from "./sessions-view";
import { uploadView } from "./upload-view";

const main = document.getElementById("main") as HTMLElement;
let leave: (() => void) | null = null;

function route(): void {
  leave?.();
  leave = null;
  const hash = location.hash || "#/";
  let section = "";
  const session = /^#\/sessions\/([0-9a-fA-F-]{36})$/.exec(hash);
  if (hash === "#/" || hash === "#") {
    section = "#/";
    leave = uploadView(main);
  } else if (hash === "#/live") {
    section = hash;
    leave = liveView(main);
  } else if (hash === "#/sessions") {
    section = hash;
    leave = sessionsView(main);
  } else if (session) {
    section = "#/sessions";
    leave = sessionView(main, session[1].toLowerCase());
  } else {
    main.replaceChildren(h("section", {}, h("h1", { tabindex: -1 }, "Not found"), h("p", {}, "Nothing here. ", h("a", { href: "#/" }, "Transcribe a recording"), ".")));
  }
  for (const link of document.querySelectorAll<HTMLAnchorElement>("nav a")) {
    if (link.getAttribute("href") === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  main.querySelector<HTMLElement>("h1")?.focus({ preventScroll: true });
}

document.getElementById("key-button")?.addEventListener("click", async () => {
  const had = getKey();
  const saved = await askForKey(had ? "A key is saved in this browser. Enter a new one, or clear it." : "Enter the API key the service's operator gave you.");
  if (saved) route();
});
const keyDialog = document.getElementById("key-dialog") as HTMLDialogElement;
document.getElementById("key-cancel")?.addEventListener("click", () => keyDialog.close());
document.getElementById("key-clear")?.addEventListener("click", () => {
  setKey(null);
  keyDialog.close();
});

updateKeyButton();
window.addEventListener("hashchange", route);
route();
