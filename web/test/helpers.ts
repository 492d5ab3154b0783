// Shared helpers of the web unit tests (bundled by test/run.mjs, run by node --test).

import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

/** The repository root (set by test/run.mjs; falls back to the working directory's parent). */
export function repoRoot(): string {
  return process.env['SEALROOM_REPO'] ?? resolve(process.cwd(), '..');
}

export function repoPath(...parts: string[]): string {
  return join(repoRoot(), ...parts);
}

export { existsSync };

/** JSON whose integers may exceed 2^53: long integer literals become strings. */
export function readJsonExact(path: string): unknown {
  const text = readFileSync(path, 'utf8').replace(/(:\s*|\[\s*|,\s*)(\d{16,})(?=\s*[,}\]])/g, '$1"$2"');
  return JSON.parse(text) as unknown;
}

export function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

export function unhex(s: string): Uint8Array<ArrayBuffer> {
  if (s.length % 2 !== 0) throw new Error(`odd hex length: ${s}`);
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** A decimal string, a 0x-hex string or a number, as bigint. */
export function big(v: unknown): bigint {
  if (typeof v === 'bigint') return v;
  if (typeof v === 'number' && Number.isSafeInteger(v)) return BigInt(v);
  if (typeof v === 'string' && /^(0x[0-9a-fA-F]+|[0-9]+)$/.test(v)) return BigInt(v);
  throw new Error(`not an integer: ${String(v)}`);
}

export function utf8(s: string): Uint8Array<ArrayBuffer> {
  return new TextEncoder().encode(s);
}
