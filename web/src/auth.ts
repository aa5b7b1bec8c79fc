// The API key: entered once, kept in localStorage, sent as `Authorization: Bearer`
// (or, on the live-stream WebSocket, as the subprotocols `token, <key>`).

const STORAGE_KEY = "ethostral.apiKey";

export function getKey(): string | null {
  try {
    return localStorage.getItem(STORAGE_KEY) || null;
  } catch {
    return null; // storage disabled: no key
  }
}

export function setKey(key: string | null): void {
  try {
    if (key) localStorage.setItem(STORAGE_KEY, key);
    else localStorage.removeItem(STORAGE_KEY);
  } catch {
    /* storage disabled: the key lasts as long as the page */
  }
  updateKeyButton();
}

export function updateKeyButton(): void {
  const button = document.getElementById("key-button");
  if (button) button.textContent = getKey() ? "API key ✓" : "API key";
}

let pending: Promise<boolean> | null = null;

/**
 * Ask for a key in the key dialog; resolves true once one is saved, false when the
 * dialog is closed otherwise (Cancel, Escape, Clear). Requests that get a 401 at the
 * same time share one dialog.
 */
export function askForKey(reason: string): Promise<boolean> {
  if (pending) return pending;
  const dialog = document.getElementById("key-dialog") as HTMLDialogElement;
  const form = dialog.querySelector("form") as HTMLFormElement;
  const input = document.getElementById("key-input") as HTMLInputElement;
  const why = document.getElementById("key-reason") as HTMLElement;
  why.textContent = reason;
  input.value = "";
  pending = new Promise<boolean>((resolve) => {
    let saved = false;
    const onSubmit = (event: SubmitEvent): void => {
      event.preventDefault();
      const key = input.value.trim();
      if (!key) {
        input.focus();
        return;
      }
      setKey(key);
      saved = true;
      dialog.close();
    };
    const onClose = (): void => {
      form.removeEventListener("submit", onSubmit);
      dialog.removeEventListener("close", onClose);
      pending = null;
      resolve(saved);
    };
    form.addEventListener("submit", onSubmit);
    dialog.addEventListener("close", onClose);
    dialog.showModal();
    input.focus();
  });
  return pending;
}
