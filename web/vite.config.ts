import { defineConfig } from "vite";

// The built app is committed into the Python package, so installing the service needs
// no Node: ethostral_serve/api/web.py serves index.html at / and the hashed files in
// /assets/ with long cache lifetimes.
export default defineConfig({
  base: "./",
  build: {
    outDir: "../ethostral_serve/web/static",
    emptyOutDir: true,
    assetsDir: "assets",
    target: "es2022",
    sourcemap: false,
    // the AudioWorklet module stays a file of its own (the page's CSP allows scripts
    // from the page's origin only, not data: URLs)
    assetsInlineLimit: (file) => (file.endsWith(".js") ? false : undefined),
  },
  server: {
    // `npm run dev`: API calls (and the live stream) go to a running service,
    // ETHOSTRAL_URL or http://127.0.0.1:8000
    proxy: {
      "^/(transcribe|sessions|healthz|callbacks)": {
        target: process.env.ETHOSTRAL_URL ?? "http://127.0.0.1:8000",
        ws: true,
      },
    },
  },
});
