// Bundles the studio into dist/: app.js (one minified ES module), app.css, index.html.
// Deterministic: the same sources and lockfile give the same bytes.
import { build } from "esbuild";
import { copyFile, mkdir } from "node:fs/promises";

// The files are overwritten in place (never a moment without dist/: `cargo build` embeds it).
const dist = new URL("./dist/", import.meta.url);
await mkdir(dist, { recursive: true });
await build({
  absWorkingDir: new URL(".", import.meta.url).pathname,
  entryPoints: ["src/main.ts"],
  outfile: "dist/app.js", // the CSS main.ts imports goes to dist/app.css
  bundle: true,
  minify: true,
  format: "esm",
  target: ["es2022", "chrome109", "firefox115", "safari16"],
  platform: "browser",
  legalComments: "none",
  charset: "utf8",
  sourcemap: false,
  logLevel: "warning",
});
await copyFile(new URL("./src/index.html", import.meta.url), new URL("./index.html", dist));
