// Passkey ceremonies. The server (webauthn-rs) sends `CreationChallengeResponse` /
// `RequestChallengeResponse` JSON, i.e. `{publicKey: {...}, mediation?}`; the browser parses
// `publicKey` with `PublicKeyCredential.parse*OptionsFromJSON` and we send back
// `credential.toJSON()`. `mediation` is deliberately not passed: login is a plain modal `get()`.

export class CeremonyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CeremonyError';
  }
}

/** True when this browser has the WebAuthn JSON helpers we rely on. */
export function passkeysSupported(): boolean {
  return (
    typeof window.PublicKeyCredential === 'function' &&
    typeof PublicKeyCredential.parseCreationOptionsFromJSON === 'function' &&
    typeof PublicKeyCredential.parseRequestOptionsFromJSON === 'function' &&
    !!navigator.credentials
  );
}

/** Drops `null` members: the WebIDL parsers reject null where a dictionary member is optional. */
function withoutNulls(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(withoutNulls);
  if (typeof v === 'object' && v !== null) {
    const out: Record<string, unknown> = {};
    for (const [k, val] of Object.entries(v)) {
      if (val !== null) out[k] = withoutNulls(val);
    }
    return out;
  }
  return v;
}

function publicKeyJson(options: unknown): unknown {
  const pk = (options as { publicKey?: unknown } | null)?.publicKey;
  if (typeof pk !== 'object' || pk === null) {
    throw new CeremonyError('The server sent passkey options this client does not understand.');
  }
  return withoutNulls(pk);
}

function explain(e: unknown): CeremonyError {
  if (e instanceof CeremonyError) return e;
  if (e instanceof DOMException) {
    switch (e.name) {
      case 'NotAllowedError':
        return new CeremonyError('The passkey request was cancelled or timed out.');
      case 'InvalidStateError':
        return new CeremonyError('This authenticator already holds a passkey for this account.');
      case 'SecurityError':
        return new CeremonyError('The browser refused passkeys on this address (it must be https, or http://localhost).');
      case 'NotSupportedError':
        return new CeremonyError('No authenticator here supports the requested kind of passkey.');
      default:
        return new CeremonyError(`The passkey request failed (${e.name}).`);
    }
  }
  if (e instanceof TypeError) {
    return new CeremonyError('The server sent passkey options this browser could not read.');
  }
  return new CeremonyError('The passkey request failed.');
}

function unsupported(): CeremonyError {
  return new CeremonyError('This browser does not support passkeys in the way sealroom needs. Use a current browser.');
}

/** Registers a new passkey from the server's creation options; returns `credential.toJSON()`. */
export async function createPasskey(options: unknown): Promise<unknown> {
  if (!passkeysSupported()) throw unsupported();
  try {
    const publicKey = PublicKeyCredential.parseCreationOptionsFromJSON(
      publicKeyJson(options) as PublicKeyCredentialCreationOptionsJSON,
    );
    const cred = await navigator.credentials.create({ publicKey });
    if (!(cred instanceof PublicKeyCredential)) throw new CeremonyError('No passkey was created.');
    return cred.toJSON();
  } catch (e) {
    throw explain(e);
  }
}

/** Asserts with an existing (discoverable) passkey; returns `credential.toJSON()`. */
export async function usePasskey(options: unknown): Promise<unknown> {
  if (!passkeysSupported()) throw unsupported();
  try {
    const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(
      publicKeyJson(options) as PublicKeyCredentialRequestOptionsJSON,
    );
    const cred = await navigator.credentials.get({ publicKey });
    if (!(cred instanceof PublicKeyCredential)) throw new CeremonyError('No passkey was used.');
    return cred.toJSON();
  } catch (e) {
    throw explain(e);
  }
}
