// Runs the web unit tests with Node's test runner. Node 20 cannot load TypeScript, so the test
// files are bundled first with rolldown (the bundler Vite 8 is built on) into
// node_modules/.cache/sealroom-test; packages stay external and load from node_modules.
//
//   node test/run.mjs                 every test/*.test.ts
//   node test/run.mjs a.test.ts ...   only these
//   node test/run.mjs --run file.ts   bundle one script and run it (benchmarks)

import { spawnSync } from 'node:child_process';
import { readdirSync, rmSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { rolldown } from 'rolldown';

const here = dirname(fileURLToPath(import.meta.url));
const web = resolve(here, '..');
const repo = resolve(web, '..');
const out = join(web, 'node_modules', '.cache', 'sealroom-test');

const args = process.argv.slice(2);
const runMode = args[0] === '--run';
const files = (runMode ? args.slice(1) : args).map((f) => resolve(process.cwd(), f));
if (files.length === 0) {
  if (runMode) {
    console.error('usage: node test/run.mjs --run <script.ts>');
    process.exit(2);
  }
  for (const f of readdirSync(here).sort()) if (f.endsWith('.test.ts')) files.push(join(here, f));
}

rmSync(out, { recursive: true, force: true });
const bundle = await rolldown({
  input: Object.fromEntries(files.map((f) => [basename(f).replace(/\.ts$/, ''), f])),
  platform: 'node',
  // Bare specifiers (packages, node: builtins) load at run time from node_modules.
  external: (id) => !id.startsWith('.') && !id.startsWith('/') && !id.startsWith('\0'),
  logLevel: 'warn',
});
await bundle.write({ dir: out, format: 'esm', entryFileNames: '[name].js', chunkFileNames: 'chunk-[hash].js', sourcemap: true });
await bundle.close();

const outputs = files.map((f) => join(out, basename(f).replace(/\.ts$/, '.js')));
const nodeArgs = ['--enable-source-maps', ...(runMode ? [] : ['--test']), ...outputs];
const r = spawnSync(process.execPath, nodeArgs, {
  stdio: 'inherit',
  env: { ...process.env, SEALROOM_REPO: repo },
});
process.exit(r.status ?? 1);
