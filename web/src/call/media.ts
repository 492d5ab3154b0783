// The media side of a call: local devices, the one RTCPeerConnection to the SFU, SDP
// negotiation over the meeting socket, ICE-restart recovery and the statistics the call screen
// shows (connection quality, active speaker). No DOM here; call/view.ts draws from this state.
//
// Negotiation (signaling over the meeting WebSocket, only while admitted):
// - Our offers (`media_offer` with the source of every sending transceiver) cover the first
//   connection, screen share on/off and ICE restarts; the SFU answers with `media_answer`.
// - The SFU offers (`media_offer`) when others' tracks come or go; we answer (`media_answer`).
// - Every step runs on one promise chain, so there is never more than one negotiation in
//   flight. Glare: the SFU lets our offer win and drops its own pending offer (then offers
//   again), so any SFU offer that arrives while an offer of ours is out, or before an offer of
//   ours queued ahead of it goes out, is stale and ignored.
//
// Every sender and receiver goes through the frame transform worker (e2ee/transforms.ts); if
// it cannot start, the call does not start (no plaintext fallback).

import type { FrameCounts, MlsStatus } from '../e2ee/protocol';
import { FrameTransforms } from '../e2ee/transforms';
import { MAX_WS_MESSAGE, type ClientMsg, type Level, type MediaSource, type Participant, type RemoteTrack, type Source } from '../proto';
import { metadataPolicy, mlines } from './sdp';
import { rate, rateInterval, SpeakerTracker, type InboundCounters, type Quality } from './quality';
import { TransformWatch, type TransformSample } from './transform-watch';

/** Host candidates of the ICE-lite SFU only: never a STUN or TURN server (DESIGN.md T8). */
const PC_CONFIG: RTCConfiguration = { iceServers: [], bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' };

// 960×540 is the smallest size at which Chromium sends all three simulcast layers (below it
// drops the top one): 240×135, 480×270 and 960×540.
const CAMERA: MediaTrackConstraints = {
  width: { ideal: 960 },
  height: { ideal: 540 },
  frameRate: { ideal: 24, max: 30 },
};
const MICROPHONE: MediaTrackConstraints = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };

/** Camera simulcast: the SFU picks a layer per receiver. About 1.3 Mbit/s at most in total. */
function simulcastEncodings(): RTCRtpEncodingParameters[] {
  return [
    { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000, maxFramerate: 15 },
    { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 400_000, maxFramerate: 24 },
    { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 800_000, maxFramerate: 24 },
  ];
}

const ANSWER_TIMEOUT_MS = 10_000;
/** `disconnected` for longer than this starts an ICE restart. */
const DISCONNECTED_GRACE_MS = 2_000;
/** ICE restarts in a row before we give up (reset once the connection is back). */
const MAX_ICE_RESTARTS = 3;
/** A restart that has not reconnected after this long is retried. */
const RESTART_WATCHDOG_MS = 10_000;
const STATS_INTERVAL_MS = 1_000;

export type ConnectionState = 'connecting' | 'connected' | 'reconnecting' | 'failed' | 'closed';

/** What we tell the others we send (`media_state`). */
export interface LocalState {
  audioMuted: boolean;
  videoMuted: boolean;
  screen: boolean;
}

/** A track we receive: its transceiver mid, and whose source it is once `media_tracks` said. */
export interface RemoteMedia {
  mid: string;
  track: MediaStreamTrack;
  transceiver: RTCRtpTransceiver;
}

export interface CallHooks {
  /** Sends on the meeting socket; false when it is not open. */
  send(msg: ClientMsg): boolean;
  /** Something the call screen shows changed. */
  changed(): void;
  /** A problem the user should know about (the call may go on). */
  problem(message: string): void;
}

/** What tests read from `window.__sealroom`. */
export interface SealroomDebug {
  pc: RTCPeerConnection;
  transformFrames: FrameCounts;
  tracks: RemoteTrack[];
  local: LocalState;
  state: ConnectionState;
  iceRestarts: number;
  /** Starts an ICE restart as if the connection had failed. */
  restartIce(): void;
  /** Renews the screen's senders, as the transform watch does when one gets no frames. */
  renewScreenSenders(): Promise<void>;
  /** The last signaling steps, for diagnosis: `[ms since start, what]`. */
  events: [number, string][];
  /** Set by the meeting page: drops the signaling socket as a lost network would. */
  dropSignaling?: () => void;
  /** Set by the meeting page: end-to-end encryption as this page sees it. */
  e2ee?: E2eeDebug;
}

/** What tests read of E2EE (`window.__sealroom.e2ee`); never a key. */
export interface E2eeDebug {
  /** MLS status: phase, epoch, security code, exporter check value, roster. */
  readonly status: MlsStatus;
  readonly epoch: number | null;
  readonly securityCode: string | null;
  readonly checkValue: string | null;
  /** The joined roster rows (MLS members and participants). */
  readonly roster: unknown[];
  /** SFrame counters from the transform worker (encrypted per source; per leaf decrypted/failed by reason). */
  readonly sframe: FrameCounts['sframe'];
  /** Chat as shown. */
  readonly chat: unknown[];
  /** Security warnings shown. */
  readonly warnings: string[];
}

declare global {
  interface Window {
    __sealroom?: SealroomDebug;
  }
}

type Kind = 'audio' | 'video';

/** Opus and VP8 only (with VP8's retransmissions): the codecs the SFU forwards. */
function preferCodecs(t: RTCRtpTransceiver, kind: Kind): void {
  const caps = RTCRtpReceiver.getCapabilities(kind);
  if (!caps) return;
  const wanted = kind === 'audio' ? ['audio/opus'] : ['video/vp8', 'video/rtx'];
  const codecs = caps.codecs.filter((c) => wanted.includes(c.mimeType.toLowerCase()));
  if (codecs.length === 0) return;
  try {
    t.setCodecPreferences(codecs);
  } catch {
    // The SFU offers and accepts only Opus and VP8 anyway.
  }
}

function describe(e: unknown): string {
  if (e instanceof DOMException) {
    switch (e.name) {
      case 'NotAllowedError':
        return 'permission was denied';
      case 'NotFoundError':
        return 'no such device';
      case 'NotReadableError':
        return 'the device is in use or not working';
      case 'OverconstrainedError':
        return 'the device cannot do what was asked';
      default:
        return e.message || e.name;
    }
  }
  return e instanceof Error ? e.message : String(e);
}

const num = (v: unknown): number => (typeof v === 'number' && Number.isFinite(v) ? v : 0);

function isStopped(t: RTCRtpTransceiver): boolean {
  return t.currentDirection === 'stopped' || (t as RTCRtpTransceiver & { stopped?: boolean }).stopped === true;
}

export class CallMedia {
  readonly pc: RTCPeerConnection;
  private readonly transforms: FrameTransforms;
  private readonly hooks: CallHooks;
  private readonly events: [number, string][] = [];
  private readonly born = performance.now();

  // --- local side
  readonly local: LocalState = { audioMuted: true, videoMuted: true, screen: false };
  micTrack: MediaStreamTrack | null = null;
  camTrack: MediaStreamTrack | null = null;
  screenTrack: MediaStreamTrack | null = null;
  private screenAudioTrack: MediaStreamTrack | null = null;
  private screenStream: MediaStream | null = null;
  private readonly mic: RTCRtpTransceiver;
  private readonly cam: RTCRtpTransceiver;
  private screenTx: RTCRtpTransceiver[] = [];
  /** Our sending transceivers and what each carries (stopped ones are removed). */
  private readonly sending = new Map<RTCRtpTransceiver, Source>();
  /** Chosen devices (null: the browser's default). */
  micId: string | null = null;
  camId: string | null = null;
  mics: MediaDeviceInfo[] = [];
  cams: MediaDeviceInfo[] = [];
  /** Why we started without microphone or camera, if we did. */
  deviceNotice: string | null = null;
  /** A local device operation (mute, camera, screen, device switch) is running. */
  busy = false;
  private deviceChain: Promise<void> = Promise.resolve();

  // --- remote side
  readonly remote = new Map<string, RemoteMedia>();
  /** The latest `media_tracks`: whose source each receiving mid carries. */
  tracks: RemoteTrack[] = [];
  private participants: Participant[] = [];
  /** Connection quality per participant id (others), and ours toward the SFU. */
  readonly quality = new Map<string, Quality>();
  selfQuality: Quality = 'connecting';
  private readonly speakerTracker = new SpeakerTracker();
  /** Participant id of the active speaker (may be `you`). */
  speaker: string | null = null;
  private prevInbound = new Map<string, InboundCounters>();
  private readonly transformWatch = new TransformWatch();
  private readonly everReceived = new Set<string>();

  // --- negotiation
  private chain: Promise<void> = Promise.resolve();
  private offerWanted = false;
  private iceRestartWanted = false;
  /** An offer of ours is being made or waits for its answer. */
  private offering = false;
  private offersSent = 0;
  private answerWaiter: { resolve(sdp: string): void; reject(e: Error): void } | null = null;

  // --- connection state and recovery
  private closed = false;
  private failed = false;
  private restarting = false;
  iceRestarts = 0;
  private disconnectTimer: number | null = null;
  private watchdog: number | null = null;
  private statsTimer: number | null = null;

  /**
   * `startAs`: microphone muted and camera off from the start (a call resumed after a dropped
   * connection keeps what the user had chosen); by default both are on.
   */
  constructor(
    private readonly you: string,
    private readonly level: Level,
    hooks: CallHooks,
    private readonly startAs: Pick<LocalState, 'audioMuted' | 'videoMuted'> = { audioMuted: false, videoMuted: false },
  ) {
    this.hooks = hooks;
    // Throws when the transform worker cannot run: then there is no call at all.
    this.transforms = new FrameTransforms((c) => {
      if (window.__sealroom) window.__sealroom.transformFrames = c;
      this.hooks.changed();
    });
    this.pc = new RTCPeerConnection(PC_CONFIG);
    this.mic = this.addSender('audio', null, 'microphone', { direction: 'sendonly' });
    this.cam = this.addSender('video', null, 'camera', { direction: 'sendonly', sendEncodings: simulcastEncodings() });

    this.pc.addEventListener('track', (ev) => this.onTrack(ev));
    this.pc.addEventListener('iceconnectionstatechange', () => this.onIceState());
    this.pc.addEventListener('connectionstatechange', () => this.onConnectionState());

    const self = this;
    window.__sealroom = {
      pc: this.pc,
      transformFrames: this.transforms.counts,
      tracks: [],
      local: this.local,
      get state() {
        return self.state;
      },
      get iceRestarts() {
        return self.iceRestarts;
      },
      restartIce: () => this.restartIce(),
      renewScreenSenders: () => this.renewScreenSenders(),
      events: this.events,
    };
  }

  get state(): ConnectionState {
    if (this.closed) return 'closed';
    if (this.failed) return 'failed';
    if (this.restarting) return 'reconnecting';
    return this.pc.connectionState === 'connected' ? 'connected' : 'connecting';
  }

  /** Opens camera and microphone, then makes the first offer. */
  async start(): Promise<void> {
    await this.openDevices();
    if (this.closed) return;
    this.sendState();
    this.requestOffer(false);
    this.statsTimer = window.setInterval(() => void this.sample(), STATS_INTERVAL_MS);
    navigator.mediaDevices?.addEventListener('devicechange', this.onDeviceChange);
    this.hooks.changed();
  }

  /** Stops everything: tracks, transport, worker, timers. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const t of [this.disconnectTimer, this.watchdog]) if (t !== null) window.clearTimeout(t);
    if (this.statsTimer !== null) window.clearInterval(this.statsTimer);
    navigator.mediaDevices?.removeEventListener('devicechange', this.onDeviceChange);
    this.answerWaiter?.reject(new Error('call closed'));
    this.answerWaiter = null;
    for (const t of [this.micTrack, this.camTrack, this.screenTrack, this.screenAudioTrack]) t?.stop();
    this.pc.close();
    this.transforms.close();
  }

  /** Leaving: every sender goes quiet and the devices are released; the transport stays up. */
  stopSending(): void {
    if (this.closed) return;
    for (const t of this.sending.keys()) void t.sender.replaceTrack(null).catch(() => {});
    for (const t of [this.micTrack, this.camTrack, this.screenTrack, this.screenAudioTrack]) t?.stop();
    this.micTrack = this.camTrack = this.screenTrack = this.screenAudioTrack = null;
    this.local.audioMuted = true;
    this.local.videoMuted = true;
    this.local.screen = false;
    this.hooks.changed();
  }

  /** Roster changes (for quality: only streams a participant says it sends are expected). */
  setParticipants(list: Participant[]): void {
    this.participants = list;
    const ids = new Set(list.map((p) => p.id));
    for (const id of [...this.quality.keys()]) {
      if (!ids.has(id)) {
        this.quality.delete(id);
        this.everReceived.delete(id);
        this.speakerTracker.forget(id);
      }
    }
    // Someone whose connection dropped comes back with new streams: until they arrive it is
    // `connecting` again, not a stalled (`poor`) connection.
    for (const p of list) {
      if (p.away) {
        this.everReceived.delete(p.id);
        this.quality.set(p.id, 'connecting');
      }
    }
  }

  // ------------------------------------------------------------------------------------------
  // Signaling

  handleAnswer(sdp: string): void {
    const w = this.answerWaiter;
    this.answerWaiter = null;
    // An answer nobody waits for (after a timeout) is ignored; the next offer starts afresh.
    if (!w) return;
    // The SFU sent this answer before any offer of its own that follows: those are fresh, even
    // while the answer is still being applied.
    this.offering = false;
    w.resolve(sdp);
  }

  /** The server refused our offer or answer (`error` with code `media_refused`). */
  handleRefused(message: string): void {
    const w = this.answerWaiter;
    this.answerWaiter = null;
    if (w) w.reject(new Error(message));
    else this.hooks.problem(message);
  }

  handleOffer(sdp: string): void {
    if (this.closed) return;
    if (this.offering) {
      // Stale: the SFU drops it when our offer arrives, and offers again afterwards.
      this.note(`server offer ignored (ours is out): ${mlines(sdp)}`);
      return;
    }
    const seen = this.offersSent;
    this.enqueue(async () => {
      if (this.closed) return;
      if (this.offersSent !== seen) {
        this.note(`server offer ignored (ours went out after it): ${mlines(sdp)}`);
        return;
      }
      this.note(`server offer: ${mlines(sdp)}`);
      await this.pc.setRemoteDescription({ type: 'offer', sdp: metadataPolicy(sdp, this.level) });
      const answer = await this.pc.createAnswer();
      await this.pc.setLocalDescription(answer);
      const out = this.pc.localDescription?.sdp ?? '';
      if (!this.sendChecked({ type: 'media_answer', sdp: out })) throw new Error('the answer could not be sent');
      this.note(`answered: ${mlines(out)}`);
      this.prune();
    });
  }

  handleTracks(tracks: RemoteTrack[]): void {
    this.note(`tracks: ${tracks.map((t) => `${t.mid}=${t.participant_id.slice(0, 4)}/${t.source}`).join(' ')}`);
    this.tracks = tracks;
    if (window.__sealroom) window.__sealroom.tracks = tracks;
    this.hooks.changed();
  }

  /** The transform worker's end of the key channel from the MLS worker. */
  connectKeys(port: MessagePort): void {
    this.transforms.connectKeys(port);
  }

  /** Latest SFrame statistics of the transform worker. */
  get sframe(): FrameCounts['sframe'] {
    return this.transforms.counts.sframe;
  }

  /** The receiving mids the server attributes to a participant (any source). */
  midsOf(participantId: string): string[] {
    return this.tracks.filter((t) => t.participant_id === participantId).map((t) => t.mid);
  }

  /** Whose source the track on this mid is, as far as `media_tracks` said. */
  trackInfo(mid: string): RemoteTrack | undefined {
    return this.tracks.find((t) => t.mid === mid);
  }

  /** The live remote track of a participant's source, if any. */
  remoteTrack(participantId: string, source: Source): MediaStreamTrack | null {
    for (const t of this.tracks) {
      if (t.participant_id !== participantId || t.source !== source) continue;
      const r = this.remote.get(t.mid);
      if (r && r.track.readyState === 'live' && !isStopped(r.transceiver)) return r.track;
    }
    return null;
  }

  private enqueue(op: () => Promise<void>): void {
    this.chain = this.chain.then(op).catch((e: unknown) => {
      if (this.closed) return;
      this.note(`failed: ${describe(e)}`);
      this.hooks.problem(`Media negotiation failed: ${describe(e)}`);
      this.hooks.changed();
    });
  }

  /** Queues an offer of ours (coalesced: several requests make one offer). */
  private requestOffer(iceRestart: boolean): void {
    this.offerWanted = true;
    if (iceRestart) this.iceRestartWanted = true;
    this.enqueue(() => this.offerNow());
  }

  /**
   * One offer of ours, start to finish. `offering` is true from before the offer is made until
   * its answer arrives: an SFU offer received in that window was sent before the SFU saw ours,
   * and the SFU drops it when ours arrives (glare: ours wins), so it must not be answered.
   */
  private async offerNow(): Promise<void> {
    if (this.closed || !this.offerWanted) return;
    this.offerWanted = false;
    const iceRestart = this.iceRestartWanted;
    this.iceRestartWanted = false;
    this.offering = true;
    try {
      const offer = await this.pc.createOffer({ iceRestart });
      await this.pc.setLocalDescription(offer);
      const sdp = this.pc.localDescription?.sdp ?? '';
      const answer = new Promise<string>((resolve, reject) => {
        const timer = window.setTimeout(() => {
          this.answerWaiter = null;
          reject(new Error('the server did not answer'));
        }, ANSWER_TIMEOUT_MS);
        this.answerWaiter = {
          resolve: (s) => {
            window.clearTimeout(timer);
            resolve(s);
          },
          reject: (e) => {
            window.clearTimeout(timer);
            reject(e);
          },
        };
      });
      answer.catch(() => {}); // awaited below; never an unhandled rejection if we bail out first
      this.offersSent += 1;
      const sources = this.sources();
      this.note(`offer${iceRestart ? ' (ICE restart)' : ''}: ${mlines(sdp)} sources ${sources.map((x) => `${x.mid}=${x.source}`).join(' ')}`);
      if (!this.sendChecked({ type: 'media_offer', sdp, sources })) {
        this.answerWaiter?.reject(new Error('not connected'));
        this.answerWaiter = null;
      }
      const answerSdp = await answer;
      if (this.closed) return;
      this.note(`answer: ${mlines(answerSdp)}`);
      // A restart while still connected changes no connection state: the new candidate pair
      // being selected is the sign that the fresh credentials work.
      const ice = iceRestart ? this.mic.sender.transport?.iceTransport : undefined;
      ice?.addEventListener('selectedcandidatepairchange', () => {
        this.restored();
        this.hooks.changed();
      }, { once: true });
      await this.pc.setRemoteDescription({ type: 'answer', sdp: metadataPolicy(answerSdp, this.level) });
      this.prune();
    } catch (e) {
      if (!this.closed && this.pc.signalingState === 'have-local-offer') {
        await this.pc.setLocalDescription({ type: 'rollback' }).catch(() => {});
      }
      throw e;
    } finally {
      this.offering = false;
    }
  }

  private note(what: string): void {
    this.events.push([Math.round(performance.now() - this.born), what]);
    if (this.events.length > 200) this.events.shift();
  }

  private sendChecked(msg: ClientMsg): boolean {
    if (JSON.stringify(msg).length > MAX_WS_MESSAGE) {
      this.hooks.problem('The media description is too large for the signaling channel.');
      return false;
    }
    return this.hooks.send(msg);
  }

  /** The source of every transceiver we send on, by the mid the last local description gave it. */
  private sources(): MediaSource[] {
    const out: MediaSource[] = [];
    for (const [t, source] of this.sending) {
      if (t.mid !== null && !isStopped(t)) out.push({ mid: t.mid, source });
    }
    return out;
  }

  /**
   * A sending transceiver, its transform attached at once: Chromium (156) silently bypasses a
   * sender transform that is set after the first setLocalDescription, so the mid (unknown until
   * then) cannot be in a sender's options.
   */
  private addSender(kind: Kind, track: MediaStreamTrack | null, source: Source, init: RTCRtpTransceiverInit): RTCRtpTransceiver {
    const t = this.pc.addTransceiver(track ?? kind, init);
    this.transforms.attachSender(t.sender, kind, source, null);
    preferCodecs(t, kind);
    this.sending.set(t, source);
    return t;
  }

  private onTrack(ev: RTCTrackEvent): void {
    if (this.closed) return;
    const t = ev.transceiver;
    const mid = t.mid;
    if (mid === null) return;
    const had = ev.receiver.transform !== null;
    this.transforms.attachReceiver(ev.receiver, mid, this.trackInfo(mid)?.source ?? null);
    this.note(`track ${ev.track.kind}:${mid}${had ? ' (transform kept)' : ''}`);
    this.remote.set(mid, { mid, track: ev.track, transceiver: t });
    ev.track.addEventListener('ended', () => {
      this.prune();
      this.hooks.changed();
    });
    this.hooks.changed();
  }

  /** Forgets receivers whose m-line the SFU stopped. */
  private prune(): void {
    let changed = false;
    for (const [mid, r] of this.remote) {
      if (isStopped(r.transceiver) || r.track.readyState === 'ended' || r.transceiver.mid !== mid) {
        this.remote.delete(mid);
        this.prevInbound.delete(mid);
        changed = true;
      }
    }
    if (changed) this.hooks.changed();
  }

  private sendState(): void {
    this.hooks.send({
      type: 'media_state',
      audio_muted: this.local.audioMuted,
      video_muted: this.local.videoMuted,
      screen: this.local.screen,
    });
  }

  // ------------------------------------------------------------------------------------------
  // Connection state and ICE restarts

  private onConnectionState(): void {
    this.note(`connection ${this.pc.connectionState}`);
    if (this.pc.connectionState === 'connected') this.restored();
    this.hooks.changed();
  }

  /** The media path works (again): the restart budget is refilled. */
  private restored(): void {
    if (this.restarting) this.note('restored');
    this.restarting = false;
    this.iceRestarts = 0;
    if (this.watchdog !== null) window.clearTimeout(this.watchdog);
    this.watchdog = null;
  }

  private onIceState(): void {
    if (this.closed) return;
    const s = this.pc.iceConnectionState;
    this.note(`ice ${s}`);
    if (s === 'connected' || s === 'completed') {
      if (this.disconnectTimer !== null) window.clearTimeout(this.disconnectTimer);
      this.disconnectTimer = null;
      if (this.pc.connectionState === 'connected') this.restored();
    } else if (s === 'disconnected') {
      if (this.disconnectTimer === null) {
        this.disconnectTimer = window.setTimeout(() => {
          this.disconnectTimer = null;
          const now = this.pc.iceConnectionState;
          if (now === 'disconnected' || now === 'failed') this.restartIce();
        }, DISCONNECTED_GRACE_MS);
      }
    } else if (s === 'failed') {
      this.restartIce();
    }
    this.hooks.changed();
  }

  /** A new offer with fresh ICE credentials; bounded, then the call is given up. */
  restartIce(): void {
    if (this.closed || this.failed) return;
    if (this.iceRestarts >= MAX_ICE_RESTARTS) {
      this.failed = true;
      this.restarting = false;
      this.hooks.problem('The media connection was lost and could not be restored. Leave and join again.');
      this.hooks.changed();
      return;
    }
    this.iceRestarts += 1;
    this.restarting = true;
    this.requestOffer(true);
    if (this.watchdog !== null) window.clearTimeout(this.watchdog);
    this.watchdog = window.setTimeout(() => {
      this.watchdog = null;
      if (this.closed) return;
      const ice = this.pc.iceConnectionState;
      if (this.pc.connectionState === 'connected' && (ice === 'connected' || ice === 'completed')) this.restored();
      else this.restartIce();
      this.hooks.changed();
    }, RESTART_WATCHDOG_MS);
    this.hooks.changed();
  }

  // ------------------------------------------------------------------------------------------
  // Local devices

  private async openDevices(): Promise<void> {
    const problems: string[] = [];
    // A camera that starts off is not opened at all (its light stays off); a muted microphone
    // is opened, as `setMicMuted` leaves it, but sends nothing.
    const wantCam = !this.startAs.videoMuted;
    let stream: MediaStream | null = null;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: MICROPHONE, video: wantCam ? CAMERA : false });
    } catch {
      // Try each on its own: one missing device must not cost the other.
    }
    if (stream) {
      this.micTrack = stream.getAudioTracks()[0] ?? null;
      this.camTrack = stream.getVideoTracks()[0] ?? null;
    } else {
      this.micTrack = await this.acquire('audio', problems);
      this.camTrack = wantCam ? await this.acquire('video', problems) : null;
    }
    if (this.closed) {
      this.micTrack?.stop();
      this.camTrack?.stop();
      return;
    }
    if (this.micTrack) {
      this.micId = this.micTrack.getSettings().deviceId ?? null;
      if (this.startAs.audioMuted) {
        this.micTrack.enabled = false;
      } else {
        await this.mic.sender.replaceTrack(this.micTrack);
        this.local.audioMuted = false;
      }
    }
    if (this.camTrack) {
      this.camId = this.camTrack.getSettings().deviceId ?? null;
      await this.cam.sender.replaceTrack(this.camTrack);
      this.local.videoMuted = false;
    }
    if (!this.micTrack || (wantCam && !this.camTrack)) {
      const missing = !this.micTrack && wantCam && !this.camTrack ? 'microphone and camera' : !this.micTrack ? 'microphone' : 'camera';
      this.deviceNotice = `You joined without ${missing}${problems.length > 0 ? ` (${problems.join('; ')})` : ''}.`;
    }
    await this.listDevices();
  }

  private async acquire(kind: Kind, problems?: string[]): Promise<MediaStreamTrack | null> {
    const chosen = kind === 'audio' ? this.micId : this.camId;
    const base = kind === 'audio' ? MICROPHONE : CAMERA;
    const constraints: MediaTrackConstraints = chosen ? { ...base, deviceId: { exact: chosen } } : { ...base };
    const what = kind === 'audio' ? 'microphone' : 'camera';
    try {
      const s = await navigator.mediaDevices.getUserMedia(kind === 'audio' ? { audio: constraints } : { video: constraints });
      const t = (kind === 'audio' ? s.getAudioTracks() : s.getVideoTracks())[0] ?? null;
      if (t && this.closed) {
        t.stop();
        return null;
      }
      return t;
    } catch (e) {
      const msg = `${what}: ${describe(e)}`;
      if (problems) problems.push(msg);
      else this.hooks.problem(`Could not use the ${msg}.`);
      return null;
    }
  }

  private readonly onDeviceChange = (): void => {
    void this.listDevices().then(() => this.hooks.changed());
  };

  private async listDevices(): Promise<void> {
    try {
      const all = await navigator.mediaDevices.enumerateDevices();
      this.mics = all.filter((d) => d.kind === 'audioinput' && d.deviceId !== '');
      this.cams = all.filter((d) => d.kind === 'videoinput' && d.deviceId !== '');
    } catch {
      this.mics = [];
      this.cams = [];
    }
  }

  /** Runs local device operations one at a time; the controls show `busy` meanwhile. */
  private device(op: () => Promise<void>): Promise<void> {
    const run = this.deviceChain.then(async () => {
      if (this.closed) return;
      this.busy = true;
      this.hooks.changed();
      try {
        await op();
      } catch (e) {
        this.hooks.problem(describe(e));
      } finally {
        this.busy = false;
        if (!this.closed) this.hooks.changed();
      }
    });
    this.deviceChain = run;
    return run;
  }

  /** Mute = no track on the sender, so not a single packet leaves; unmute puts it back. */
  setMicMuted(muted: boolean): Promise<void> {
    return this.device(async () => {
      if (muted) {
        await this.mic.sender.replaceTrack(null);
        if (this.micTrack) this.micTrack.enabled = false;
      } else {
        this.micTrack ??= await this.acquire('audio');
        if (!this.micTrack) return;
        this.micTrack.enabled = true;
        this.micId = this.micTrack.getSettings().deviceId ?? this.micId;
        await this.mic.sender.replaceTrack(this.micTrack);
      }
      this.local.audioMuted = muted;
      this.sendState();
    });
  }

  /** Camera off = no track on the sender and the camera released; on = opened again. */
  setCameraOff(off: boolean): Promise<void> {
    return this.device(async () => {
      if (off) {
        await this.cam.sender.replaceTrack(null);
        this.camTrack?.stop();
        this.camTrack = null;
      } else {
        const t = this.camTrack ?? (await this.acquire('video'));
        if (!t) return;
        this.camTrack = t;
        this.camId = t.getSettings().deviceId ?? this.camId;
        await this.cam.sender.replaceTrack(t);
      }
      this.local.videoMuted = off;
      this.sendState();
    });
  }

  selectMic(deviceId: string): Promise<void> {
    return this.device(async () => {
      if (deviceId === this.micId && this.micTrack) return;
      const old = this.micTrack;
      const prevId = this.micId;
      this.micId = deviceId;
      if (!old) return; // used on the next unmute
      const t = await this.acquire('audio');
      if (!t) {
        this.micId = prevId;
        return;
      }
      t.enabled = !this.local.audioMuted;
      if (!this.local.audioMuted) await this.mic.sender.replaceTrack(t);
      this.micTrack = t;
      old.stop();
    });
  }

  selectCamera(deviceId: string): Promise<void> {
    return this.device(async () => {
      if (deviceId === this.camId && this.camTrack) return;
      const old = this.camTrack;
      const prevId = this.camId;
      this.camId = deviceId;
      if (!old) return; // used when the camera is turned on
      const t = await this.acquire('video');
      if (!t) {
        this.camId = prevId;
        return;
      }
      await this.cam.sender.replaceTrack(t);
      this.camTrack = t;
      old.stop();
    });
  }

  /** Screen share: new sending transceiver(s), renegotiated with the SFU. */
  startScreen(): Promise<void> {
    return this.device(async () => {
      if (this.local.screen) return;
      let stream: MediaStream;
      try {
        stream = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 15, max: 30 } }, audio: true });
      } catch (e) {
        if (e instanceof DOMException && e.name === 'NotAllowedError') this.hooks.problem('Screen sharing was cancelled or not allowed.');
        else this.hooks.problem(`Could not share the screen: ${describe(e)}`);
        return;
      }
      if (this.closed) {
        for (const t of stream.getTracks()) t.stop();
        return;
      }
      const video = stream.getVideoTracks()[0];
      if (!video) return;
      video.contentHint = 'detail';
      // The browser's own "stop sharing" ends the track.
      video.addEventListener('ended', () => void this.stopScreen());
      this.screenTrack = video;
      this.screenAudioTrack = stream.getAudioTracks()[0] ?? null;
      this.screenStream = stream;
      this.addScreenSenders();
      this.local.screen = true;
      this.sendState();
      this.requestOffer(false);
    });
  }

  /** The screen's sending transceivers for its current tracks, each with its transform. */
  private addScreenSenders(): void {
    if (!this.screenTrack || !this.screenStream) return;
    const streams = [this.screenStream];
    this.screenTx = [this.addSender('video', this.screenTrack, 'screen', { direction: 'sendonly', streams, sendEncodings: [{ maxBitrate: 1_000_000, maxFramerate: 15 }] })];
    if (this.screenAudioTrack) this.screenTx.push(this.addSender('audio', this.screenAudioTrack, 'screen_audio', { direction: 'sendonly', streams }));
  }

  /** Stops the screen's transceivers (not its tracks). */
  private removeScreenSenders(): void {
    for (const t of this.screenTx) {
      this.sending.delete(t);
      if (!isStopped(t)) t.stop();
    }
    this.screenTx = [];
  }

  /**
   * The screen share goes on over fresh transceivers with fresh transforms (same tracks), in one
   * renegotiation: the mend for a sender transform that gets no frames (transform-watch.ts).
   */
  renewScreenSenders(): Promise<void> {
    return this.device(async () => {
      if (!this.local.screen || this.closed) return;
      this.removeScreenSenders();
      this.addScreenSenders();
      this.requestOffer(false);
    });
  }

  stopScreen(): Promise<void> {
    return this.device(async () => {
      if (!this.local.screen) return;
      this.removeScreenSenders();
      this.screenTrack?.stop();
      this.screenAudioTrack?.stop();
      this.screenTrack = null;
      this.screenAudioTrack = null;
      this.screenStream = null;
      this.local.screen = false;
      this.sendState();
      this.requestOffer(false);
    });
  }

  // ------------------------------------------------------------------------------------------
  // Statistics: quality per participant, active speaker, stuck frame transforms

  /**
   * A receiver whose payload arrives, or a sender whose encoder produces frames, while no frame
   * reaches its transform gets a fresh transform (transform-watch.ts). `encoded`: frames encoded
   * per sending mid.
   */
  private watchTransforms(inbound: Map<string, { bytesReceived: number }>, encoded: Map<string, number>): void {
    const seen = this.transforms.counts.byTransceiver;
    const samples: TransformSample[] = [];
    /** What a restart of each watched transform does; returns the note for the events. */
    const restart = new Map<string, () => string>();
    for (const [mid, r] of this.remote) {
      const c = inbound.get(mid);
      if (!c) continue;
      const key = `receive:${mid}`;
      samples.push({ key, input: c.bytesReceived, workerFrames: seen[key] ?? 0 });
      restart.set(key, () => {
        this.transforms.restartReceiver(r.transceiver.receiver, mid, this.trackInfo(mid)?.source ?? null);
        return `transform restarted ${mid}`;
      });
    }
    for (const [t, source] of this.sending) {
      if (isStopped(t)) continue;
      // Listed while its mid is not yet negotiated too, so that its restarts are not forgotten
      // across a renewal; audio senders (no frame count) never count as fed.
      const key = `send:${source}`;
      samples.push({ key, input: t.mid === null ? 0 : (encoded.get(t.mid) ?? 0), workerFrames: seen[key] ?? 0 });
      // Microphone and camera transforms are attached before the first offer (not seen stuck).
      const screen = source === 'screen' || source === 'screen_audio';
      restart.set(key, () => {
        if (!screen) return `transform stuck ${key}: not mended`;
        void this.renewScreenSenders();
        return `transform restarted ${key}: screen senders renewed`;
      });
    }
    for (const v of this.transformWatch.sample(performance.now(), samples)) {
      if (v.action === 'give_up') this.note(`transform stuck ${v.key}: given up`);
      else this.note(`${restart.get(v.key)?.() ?? `transform gone ${v.key}`} (${v.attempt})`);
    }
  }

  private async sample(): Promise<void> {
    if (this.closed) return;
    let report: RTCStatsReport;
    try {
      report = await this.pc.getStats();
    } catch {
      return;
    }
    if (this.closed) return;
    const inbound = new Map<string, InboundCounters & { kind: string; audioLevel: number; bytesReceived: number }>();
    const encoded = new Map<string, number>();
    const byTrackId = new Map<string, string>();
    for (const [mid, r] of this.remote) byTrackId.set(r.track.id, mid);
    let selfLevel = 0;
    let remoteLoss = -1;
    let remoteJitter = 0;
    report.forEach((raw: unknown) => {
      const s = raw as Record<string, unknown>;
      if (s['type'] === 'inbound-rtp') {
        const mid = typeof s['mid'] === 'string' ? s['mid'] : byTrackId.get(String(s['trackIdentifier']));
        if (!mid) return;
        inbound.set(mid, {
          kind: String(s['kind']),
          packetsReceived: num(s['packetsReceived']),
          packetsLost: num(s['packetsLost']),
          jitter: num(s['jitter']),
          audioLevel: num(s['audioLevel']),
          bytesReceived: num(s['bytesReceived']),
        });
      } else if (s['type'] === 'outbound-rtp' && typeof s['mid'] === 'string' && typeof s['framesEncoded'] === 'number') {
        // Video only (audio has no frame count); a simulcast sender has one per layer.
        encoded.set(s['mid'], (encoded.get(s['mid']) ?? 0) + s['framesEncoded']);
      } else if (s['type'] === 'media-source' && s['kind'] === 'audio') {
        // Our microphone (the screen's audio does not make us the speaker).
        if (s['trackIdentifier'] === this.micTrack?.id) selfLevel = num(s['audioLevel']);
      } else if (s['type'] === 'remote-inbound-rtp') {
        remoteLoss = Math.max(remoteLoss, num(s['fractionLost']) * 100);
        remoteJitter = Math.max(remoteJitter, num(s['jitter']));
      }
    });

    // Quality of each other participant: only the streams it says it sends.
    const levels = new Map<string, number>();
    for (const p of this.participants) {
      if (p.id === this.you) continue;
      const streams: { prev: InboundCounters | undefined; cur: InboundCounters }[] = [];
      for (const t of this.tracks) {
        if (t.participant_id !== p.id) continue;
        const expected =
          (t.source === 'microphone' && !p.audio_muted) || (t.source === 'camera' && !p.video_muted) || ((t.source === 'screen' || t.source === 'screen_audio') && p.screen);
        const cur = inbound.get(t.mid);
        if (!cur) continue;
        if (expected) streams.push({ prev: this.prevInbound.get(t.mid), cur });
        if (cur.packetsReceived > 0) this.everReceived.add(p.id);
        if (t.source === 'microphone' && !p.audio_muted) levels.set(p.id, Math.max(levels.get(p.id) ?? 0, cur.audioLevel));
      }
      const q: Quality = !p.media_connected ? 'connecting' : streams.length === 0 ? (this.everReceived.has(p.id) ? 'good' : 'connecting') : rateInterval(streams, this.everReceived.has(p.id));
      this.quality.set(p.id, q);
    }
    this.prevInbound = new Map([...inbound].map(([mid, c]) => [mid, { packetsReceived: c.packetsReceived, packetsLost: c.packetsLost, jitter: c.jitter }]));
    this.watchTransforms(inbound, encoded);

    // Ours: what the SFU reports back about our streams (RTCP receiver reports).
    if (this.pc.connectionState !== 'connected') this.selfQuality = 'connecting';
    else if (remoteLoss < 0) this.selfQuality = 'good';
    else this.selfQuality = rate(remoteLoss, remoteJitter * 1000);

    if (!this.local.audioMuted) levels.set(this.you, selfLevel);
    this.speaker = this.speakerTracker.update(levels);
    this.hooks.changed();
  }
}
