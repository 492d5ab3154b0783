// The REST client: one function per call of docs/API.md. Same-origin `/api/...` only, cookies
// with `credentials: 'same-origin'`, JSON in and out; every POST sends a JSON body (`{}` when
// there is nothing to say). A non-2xx answer becomes an `ApiFailure` carrying the server's
// `ApiError` (and `Retry-After` for 429).

import type {
  ApiError,
  CeremonyStarted,
  CreateMeeting,
  CreateUser,
  DeviceView,
  EnrolInfo,
  EnrolInfoRequest,
  EnrolmentLink,
  EnrolmentView,
  EnrolPasskeyFinish,
  EnrolPasskeyStart,
  LoginPasskeyFinish,
  Me,
  MeetingCreated,
  MeetingSummary,
  SetDeviceRestricted,
  UserRef,
  UserView,
} from './proto';

/** The `{}` answer of calls that only acknowledge. */
export type Empty = Record<string, never>;

export class ApiFailure extends Error {
  readonly status: number;
  readonly code: string;
  /** Seconds to wait, from `Retry-After` (429 only). */
  readonly retryAfter: number | null;

  constructor(status: number, error: ApiError, retryAfter: number | null) {
    super(error.message);
    this.name = 'ApiFailure';
    this.status = status;
    this.code = error.code;
    this.retryAfter = retryAfter;
  }

  /** The text to show the user. */
  userMessage(): string {
    if (this.status === 429 && this.retryAfter !== null) {
      return `${this.message} (retry after ${this.retryAfter} s)`;
    }
    return this.message;
  }
}

function parseRetryAfter(value: string | null): number | null {
  if (value === null) return null;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed);
  const when = Date.parse(trimmed);
  if (Number.isNaN(when)) return null;
  return Math.max(0, Math.ceil((when - Date.now()) / 1000));
}

function isApiError(v: unknown): v is ApiError {
  return (
    typeof v === 'object' &&
    v !== null &&
    typeof (v as { code?: unknown }).code === 'string' &&
    typeof (v as { message?: unknown }).message === 'string'
  );
}

async function request<T>(method: 'GET' | 'POST', path: string, body?: unknown): Promise<T> {
  if (!path.startsWith('/api/')) throw new Error(`not an API path: ${path}`);
  const init: RequestInit = {
    method,
    credentials: 'same-origin',
    cache: 'no-store',
    redirect: 'error',
    headers: { Accept: 'application/json' },
  };
  if (method === 'POST') {
    init.headers = { Accept: 'application/json', 'Content-Type': 'application/json' };
    init.body = JSON.stringify(body ?? {});
  }
  let res: Response;
  try {
    res = await fetch(path, init);
  } catch {
    throw new ApiFailure(0, { code: 'network', message: 'The server could not be reached.' }, null);
  }
  const text = await res.text();
  let parsed: unknown = undefined;
  if (text !== '') {
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = undefined;
    }
  }
  if (!res.ok) {
    const error: ApiError = isApiError(parsed)
      ? parsed
      : { code: `http_${res.status}`, message: `The request failed (HTTP ${res.status}).` };
    throw new ApiFailure(res.status, error, res.status === 429 ? parseRetryAfter(res.headers.get('Retry-After')) : null);
  }
  return (parsed ?? {}) as T;
}

const get = <T>(path: string) => request<T>('GET', path);
const post = <T>(path: string, body: unknown = {}) => request<T>('POST', path, body);
const seg = encodeURIComponent;

export const api = {
  me: () => get<Me>('/api/me'),
  logout: () => post<Empty>('/api/logout'),

  enrolInfo: (body: EnrolInfoRequest) => post<EnrolInfo>('/api/enrol/info', body),
  enrolPasskeyStart: (body: EnrolPasskeyStart) => post<CeremonyStarted>('/api/enrol/passkey/start', body),
  enrolPasskeyFinish: (body: EnrolPasskeyFinish) => post<Me>('/api/enrol/passkey/finish', body),

  loginPasskeyStart: () => post<CeremonyStarted>('/api/login/passkey/start'),
  loginPasskeyFinish: (body: LoginPasskeyFinish) => post<Me>('/api/login/passkey/finish', body),

  myDevices: () => get<DeviceView[]>('/api/me/devices'),
  revokeMyDevice: (id: string) => post<Empty>(`/api/me/devices/${seg(id)}/revoke`),

  meetings: () => get<MeetingSummary[]>('/api/meetings'),
  createMeeting: (body: CreateMeeting) => post<MeetingCreated>('/api/meetings', body),
  users: () => get<UserRef[]>('/api/users'),

  adminUsers: () => get<UserView[]>('/api/admin/users'),
  adminCreateUser: (body: CreateUser) => post<EnrolmentLink>('/api/admin/users', body),
  adminNewEnrolment: (userId: string) => post<EnrolmentLink>(`/api/admin/users/${seg(userId)}/enrolments`),
  adminDisableUser: (userId: string) => post<Empty>(`/api/admin/users/${seg(userId)}/disable`),
  adminEnrolments: () => get<EnrolmentView[]>('/api/admin/enrolments'),
  adminRevokeEnrolment: (id: string) => post<Empty>(`/api/admin/enrolments/${seg(id)}/revoke`),
  adminRevokeDevice: (id: string) => post<Empty>(`/api/admin/devices/${seg(id)}/revoke`),
  adminSetRestricted: (id: string, allowed: boolean) =>
    post<Empty>(`/api/admin/devices/${seg(id)}/restricted`, { allowed } satisfies SetDeviceRestricted),
};
