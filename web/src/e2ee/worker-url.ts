// Starting our workers under the server's CSP: `require-trusted-types-for 'script'` with the one
// policy `sealroom-worker`, which admits only this origin's bundled scripts as worker URLs. A
// policy name can be created once per page, so every worker goes through this module.

// Trusted Types are not in TypeScript's DOM lib yet; the little we use.
interface TrustedTypePolicyLike {
  createScriptURL(input: string): unknown;
}
interface TrustedTypesLike {
  createPolicy(name: string, rules: { createScriptURL(input: string): string }): TrustedTypePolicyLike;
}

/** The Trusted Types policy name the server's CSP must allow (`trusted-types sealroom-worker`). */
export const WORKER_POLICY = 'sealroom-worker';

let policy: TrustedTypePolicyLike | null = null;

/** A script URL the CSP accepts for `new Worker`: same origin, our bundled assets only. */
export function trustedWorkerUrl(url: string): string {
  const tt = (window as unknown as { trustedTypes?: TrustedTypesLike }).trustedTypes;
  if (!tt) return url;
  policy ??= tt.createPolicy(WORKER_POLICY, {
    createScriptURL(input: string): string {
      const u = new URL(input, location.href);
      if (u.origin !== location.origin || !(u.pathname.startsWith('/assets/') || u.pathname.startsWith('/src/'))) {
        throw new TypeError(`refusing worker script ${u.href}`);
      }
      return u.href;
    },
  });
  // `new Worker` accepts a TrustedScriptURL where TypeScript only knows strings.
  return policy.createScriptURL(url) as string;
}
