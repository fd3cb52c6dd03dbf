// A real `roost serve --dev` subprocess on port 0 for the Node tests, and dev tokens from it.
import { execFile, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const ROOST = process.env.ROOST_BIN ?? path.join(ROOT, ".venv", "bin", "roost");

/** `env`: extra ROOST_* settings for this server (e.g. a short ROOST_RECONNECT_GRACE); `args`: more flags. */
export async function startServer(env = {}, args = []) {
  const data = mkdtempSync(path.join(tmpdir(), "roost-js-"));
  const child = spawn(ROOST, ["serve", "--dev", "--port", "0", "--data", data, "--log-level", "warning", ...args], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, ...env },
  });
  const lines = await new Promise((resolve, reject) => {
    let out = "";
    child.stdout.on("data", (chunk) => {
      out += chunk;
      if (/ROOST_SERVICE_KEY=\S+\n/.test(out)) resolve(out);
    });
    child.on("exit", (code) => reject(new Error(`roost serve exited with ${code}`)));
  });
  const url = /ROOST_URL=(\S+)/.exec(lines)[1];
  const serviceKey = /ROOST_SERVICE_KEY=(\S+)/.exec(lines)[1];
  const http = url.replace(/^ws/, "http").replace(/\/$/, "");
  return {
    url,
    http,
    serviceKey,
    async token(user) {
      const res = await fetch(`${http}/dev/token?user=${encodeURIComponent(user)}`);
      if (!res.ok) throw new Error(`token: ${res.status}`);
      return (await res.json()).token;
    },
    /** A token of `user` signed with the dev key, living `ttl` ("3s", "1h"): `roost token`. */
    mint(user, ttl) {
      return new Promise((resolve, reject) => {
        execFile(ROOST, ["token", "--key", path.join(data, "dev-key.jwk"), "--sub", user, "--ttl", ttl], (err, stdout) =>
          (err ? reject(err) : resolve(stdout.trim())));
      });
    },
    async stop() {
      child.kill("SIGTERM");
      await new Promise((resolve) => child.once("exit", resolve));
      rmSync(data, { recursive: true, force: true });
    },
  };
}
