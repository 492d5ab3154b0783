// The call screen: a video grid with one tile per participant (self first), the controls
// (microphone, camera, screen, device choice, leave) and the media connection state.
//
// Unlike the rest of the meeting page, this part is never rebuilt: tiles are kept per
// participant id and only their text and media sources change, because re-creating (or even
// detaching) a <video>/<audio> element stops its playback. Every state shows as text.
// A participant whose signaling connection dropped (`away`) keeps its tile, marked as
// reconnecting: its media is gone until it is back, which is not a failure.

import { h, uid } from '../dom';
import { clientLabel, kindLabel } from '../format';
import type { Level, Participant, Source } from '../proto';
import { AnnouncementWatch, joinRoster, tileIdentity, unannouncedMessage, type RosterRow, type TileIdentity } from '../e2ee/roster';
import { initialStatus, type E2eeSession } from '../e2ee/session';
import { emptyCounts } from '../e2ee/transforms';
import type { CallMedia, ConnectionState, E2eeDebug } from './media';
import type { Quality } from './quality';
import { SecurityPanel, deviceKindText, memberName } from './security';

export interface CallActions {
  leave(): void;
}

const STATE_TEXT: Record<ConnectionState, string> = {
  connecting: 'connecting…',
  connected: 'connected',
  reconnecting: 'reconnecting…',
  failed: 'failed',
  closed: 'closed',
};

const QUALITY_TEXT: Record<Quality, string> = {
  connecting: 'connecting',
  good: 'good',
  fair: 'fair',
  poor: 'poor',
};

function setText(el: HTMLElement, text: string): void {
  if (el.textContent !== text) el.textContent = text;
}

function setData(el: HTMLElement, name: string, value: string): void {
  if (el.dataset[name] !== value) el.dataset[name] = value;
}

/** Points a media element at one track (or none) without restarting it when nothing changed. */
function setSource(el: HTMLMediaElement, track: MediaStreamTrack | null): void {
  const current = el.srcObject instanceof MediaStream ? (el.srcObject.getTracks()[0] ?? null) : null;
  if (current === track) return;
  el.srcObject = track ? new MediaStream([track]) : null;
  if (track) void el.play().catch(() => {});
}

function videoEl(source: Source, label: string): HTMLVideoElement {
  const v = h('video', { class: `tile-video tile-${source}`, 'data-source': source, 'aria-label': label, playsinline: true, autoplay: true });
  // Sound comes from the <audio> elements; the video elements never play any.
  v.muted = true;
  return v;
}

function audioEl(source: Source): HTMLAudioElement {
  const a = h('audio', { class: 'tile-audio', 'data-source': source, autoplay: true });
  a.autoplay = true;
  return a;
}

interface TileData {
  participant: Participant;
  isSelf: boolean;
  audioMuted: boolean;
  videoMuted: boolean;
  screen: boolean;
  camera: MediaStreamTrack | null;
  screenTrack: MediaStreamTrack | null;
  mic: MediaStreamTrack | null;
  screenAudio: MediaStreamTrack | null;
  quality: Quality;
  active: boolean;
  /** Its connection to the server dropped; it is expected back (others only). */
  away: boolean;
  /** Who the keys say sends on this tile (others), or our own leaf (self). */
  identity: TileIdentity;
  /** We hold the group's keys. */
  keyed: boolean;
}

/** The tile's line about its keys: who the KIDs of its frames say sends, and whether that verifies. */
function identityText(d: TileData): string {
  const id = d.identity;
  const m = id.member;
  if (d.isSelf) {
    if (!m) return 'Keys: not in the encrypted group yet';
    return `Keys: leaf ${m.leaf}, ${m.verified ? 'verified' : 'NOT VERIFIED'} as ${memberName(m)} on ${m.deviceName ?? 'unknown device'}`;
  }
  if (!d.keyed) return 'Encryption: waiting for this device’s keys';
  if (id.leaf === null) return id.stalled ? 'Encryption: media arrives but nothing decrypts' : 'Encryption: nothing decrypted from this tile yet';
  const who = m ? `${memberName(m)} on ${m.deviceName ?? 'unknown device'} (${deviceKindText(m.deviceKind)}, ${clientLabel(m.deviceKind)})` : `leaf ${id.leaf}, which is not a member`;
  const words = [`Encrypted by ${who}`, m?.verified ? 'verified' : 'NOT VERIFIED'];
  if (id.mismatch) words.push('DOES NOT MATCH the server’s name for this tile');
  if (id.stalled) words.push('nothing decrypts any more');
  return words.join(' — ');
}

class Tile {
  readonly root: HTMLLIElement;
  private readonly media: HTMLDivElement;
  private readonly camera: HTMLVideoElement;
  private readonly placeholder: HTMLParagraphElement;
  private screen: HTMLVideoElement | null = null;
  private readonly mic: HTMLAudioElement | null;
  private screenAudio: HTMLAudioElement | null = null;
  private readonly name: HTMLElement;
  private readonly badges: HTMLSpanElement;
  private readonly speaking: HTMLSpanElement;
  private readonly device: HTMLParagraphElement;
  private readonly keys: HTMLParagraphElement;
  private readonly state: HTMLParagraphElement;
  private readonly presence: HTMLParagraphElement;
  private readonly quality: HTMLParagraphElement;
  private displayName = '';

  constructor(p: Participant, isSelf: boolean) {
    const nameId = uid('tile-name');
    this.name = h('strong', { class: 'tile-name', id: nameId });
    this.badges = h('span', { class: 'tile-badges' });
    this.speaking = h('span', { class: 'badge badge-speaking', testid: 'active-speaker', hidden: true }, 'speaking');
    this.device = h('p', { class: 'tile-detail' });
    this.keys = h('p', { class: 'tile-detail tile-identity', testid: 'tile-identity' });
    this.state = h('p', { class: 'tile-detail tile-state', testid: 'tile-state' });
    this.presence = h('p', { class: 'tile-detail tile-presence', testid: 'tile-presence', hidden: true });
    this.quality = h('p', { class: 'tile-detail tile-quality', testid: 'tile-quality' });
    this.camera = videoEl('camera', 'camera');
    this.placeholder = h('p', { class: 'tile-placeholder', 'aria-hidden': 'true' });
    this.media = h('div', { class: 'tile-media' }, this.camera, this.placeholder);
    this.mic = isSelf ? null : audioEl('microphone');
    this.root = h(
      'li',
      {
        class: isSelf ? 'tile tile-self' : 'tile',
        testid: isSelf ? 'self-tile' : 'tile',
        'data-participant': p.id,
        'data-user': p.user_name,
        'data-active': 'false',
        'aria-labelledby': nameId,
      },
      this.media,
      this.mic,
      h('div', { class: 'tile-caption' }, h('p', { class: 'tile-title' }, this.name, this.badges, this.speaking), this.keys, this.device, this.presence, this.state, this.quality),
    );
  }

  render(d: TileData): void {
    const p = d.participant;
    if (this.displayName !== p.display_name) {
      this.displayName = p.display_name;
      this.camera.setAttribute('aria-label', `Camera of ${p.display_name}`);
    }
    // The name comes from the keys (the KID's leaf → its credential), never only from signaling.
    const id = d.identity;
    const m = id.member;
    const keyName = m && m.verified && !id.mismatch ? (m.displayName ?? p.display_name) : null;
    setText(this.name, keyName !== null ? (d.isSelf ? `${keyName} (you)` : keyName) : `${p.display_name}${d.isSelf ? ' (you)' : ''} (name from the server, not confirmed by keys)`);
    setText(this.keys, identityText(d));
    setData(this.keys, 'leaf', id.leaf === null ? '' : String(id.leaf));
    setData(this.keys, 'verified', String(m?.verified === true && !id.mismatch));
    setData(this.keys, 'keyUser', m?.username ?? '');
    setData(this.keys, 'keyDevice', m?.deviceId ?? '');
    setData(this.keys, 'mismatch', String(id.mismatch));
    setData(this.keys, 'stalled', String(id.stalled));
    setData(this.root, 'verified', String(m?.verified === true && !id.mismatch));
    setText(this.badges, p.host ? 'host' : '');
    this.badges.className = p.host ? 'tile-badges badge badge-host' : 'tile-badges';
    setText(this.device, `Device: ${p.device_name} (${kindLabel(p.device_kind)}, ${clientLabel(p.device_kind)})`);

    const words = [d.audioMuted ? 'muted' : 'microphone on', d.videoMuted ? 'camera off' : 'camera on'];
    if (d.screen) words.push('sharing screen');
    setText(this.state, words.join(' · '));
    setData(this.state, 'audioMuted', String(d.audioMuted));
    setData(this.state, 'videoMuted', String(d.videoMuted));
    setData(this.state, 'screen', String(d.screen));

    setData(this.root, 'away', String(d.away));
    this.presence.hidden = !d.away;
    setText(this.presence, d.away ? 'Reconnecting: connection to the server lost' : '');
    setText(this.quality, `Connection: ${d.away ? 'reconnecting' : QUALITY_TEXT[d.quality]}`);
    setData(this.quality, 'quality', d.away ? 'reconnecting' : d.quality);

    setData(this.root, 'active', String(d.active));
    this.speaking.hidden = !d.active;

    // Camera: the video, or a text placeholder saying why there is none (not the last frame of
    // someone who is reconnecting).
    const camera = d.videoMuted || d.away ? null : d.camera;
    setSource(this.camera, camera);
    this.camera.hidden = camera === null;
    setText(this.placeholder, d.away ? 'reconnecting…' : d.videoMuted ? 'camera off' : camera === null ? 'no video yet' : '');
    this.placeholder.hidden = camera !== null;

    // Screen share: its own video (and audio), only while shared.
    const screen = d.screen ? d.screenTrack : null;
    if (screen && !this.screen) {
      this.screen = videoEl('screen', `Screen shared by ${p.display_name}`);
      this.media.append(this.screen);
    }
    if (this.screen) {
      setSource(this.screen, screen);
      if (!screen) {
        this.screen.remove();
        this.screen = null;
      }
    }
    this.root.classList.toggle('tile-sharing', screen !== null);

    if (this.mic) setSource(this.mic, d.mic);
    if (!d.isSelf) {
      if (d.screenAudio && !this.screenAudio) {
        this.screenAudio = audioEl('screen_audio');
        this.root.append(this.screenAudio);
      }
      if (this.screenAudio) {
        setSource(this.screenAudio, d.screenAudio);
        if (!d.screenAudio) {
          this.screenAudio.remove();
          this.screenAudio = null;
        }
      }
    }
  }

  /** Stops playback before the tile goes away. */
  dispose(): void {
    for (const el of this.root.querySelectorAll<HTMLMediaElement>('video, audio')) {
      el.pause();
      el.srcObject = null;
    }
    this.root.remove();
  }
}

export class CallView {
  readonly root: HTMLElement;
  private readonly grid: HTMLUListElement;
  private readonly tiles = new Map<string, Tile>();
  private readonly status: HTMLParagraphElement;
  private readonly notice: HTMLParagraphElement;
  private readonly muteButton: HTMLButtonElement;
  private readonly cameraButton: HTMLButtonElement;
  private readonly screenButton: HTMLButtonElement;
  private readonly micSelect: HTMLSelectElement;
  private readonly cameraSelect: HTMLSelectElement;
  private you = '';
  private participants: Participant[] = [];
  /** Since when each participant has been without an MLS leaf (performance.now()), for "no keys". */
  private readonly firstSeen = new Map<string, number>();
  private readonly security: SecurityPanel;
  private readonly ticker: number;
  /** `restricted`: MLS members the server does not announce end our participation. */
  private readonly announcements = new AnnouncementWatch();
  private unannouncedFailed = false;
  /** The last joined roster and warnings (also for tests). */
  rows: RosterRow[] = [];
  warnings: string[] = [];

  constructor(
    private readonly media: CallMedia | null,
    startError: string | null,
    actions: CallActions,
    private readonly e2ee: E2eeSession | null = null,
    private readonly level: Level = 'restricted',
  ) {
    this.security = new SecurityPanel(e2ee, level);
    // Time-based flags ("no keys" after 5 s) need a redraw without any event.
    this.ticker = window.setInterval(() => this.refresh(), 1000);
    const headingId = uid('call-heading');
    this.status = h('p', { class: 'call-status', testid: 'media-status', 'aria-live': 'polite' });
    this.notice = h('p', { class: 'call-notice', testid: 'media-notice', hidden: true });
    this.grid = h('ul', { class: 'call-grid', testid: 'call-grid', 'aria-label': 'Participants’ video' });

    const m = media;
    // While a device operation runs the buttons are aria-disabled and ignore clicks, but stay
    // focusable: disabling a focused button would drop keyboard focus to the page.
    const act = (fn: (m: CallMedia) => Promise<void>) => () => {
      if (m && !m.busy) void fn(m);
    };
    this.muteButton = h('button', { type: 'button', testid: 'mute-button', on: { click: act((x) => x.setMicMuted(!x.local.audioMuted)) } });
    this.cameraButton = h('button', { type: 'button', testid: 'camera-button', on: { click: act((x) => x.setCameraOff(!x.local.videoMuted)) } });
    this.screenButton = h('button', {
      type: 'button',
      testid: 'screen-button',
      on: { click: act((x) => (x.local.screen ? x.stopScreen() : x.startScreen())) },
    });
    this.micSelect = h('select', { id: uid('mic'), testid: 'mic-select', on: { change: () => m && void m.selectMic(this.micSelect.value) } });
    this.cameraSelect = h('select', { id: uid('cam'), testid: 'camera-select', on: { change: () => m && void m.selectCamera(this.cameraSelect.value) } });
    const leave = h('button', { type: 'button', class: 'danger', testid: 'leave-button', on: { click: () => actions.leave() } }, 'Leave meeting');

    const controls = h(
      'div',
      { class: 'call-controls', role: 'group', 'aria-label': 'Call controls' },
      h('div', { class: 'call-buttons' }, this.muteButton, this.cameraButton, this.screenButton, leave),
      h(
        'div',
        { class: 'call-devices' },
        h('div', { class: 'field' }, h('label', { for: this.micSelect.id }, 'Microphone'), this.micSelect),
        h('div', { class: 'field' }, h('label', { for: this.cameraSelect.id }, 'Camera'), this.cameraSelect),
      ),
    );
    this.root = h(
      'section',
      { class: 'call', 'aria-labelledby': headingId },
      h('h2', { id: headingId, class: 'visually-hidden' }, 'Call'),
      this.status,
      startError ? h('p', { class: 'alert', role: 'alert', testid: 'media-error' }, `Audio and video could not start: ${startError}`) : null,
      this.notice,
      this.grid,
      controls,
      h('div', { class: 'call-side' }, this.security.root, this.security.chatRoot),
    );
    if (!media) {
      setText(this.muteButton, 'Mute microphone');
      setText(this.cameraButton, 'Turn camera off');
      setText(this.screenButton, 'Share screen');
      fillSelect(this.micSelect, [], null, 'No microphone');
      fillSelect(this.cameraSelect, [], null, 'No camera');
      for (const el of [this.muteButton, this.cameraButton, this.screenButton]) el.disabled = true;
    }
    this.refresh();
  }

  /** The roster changed. */
  setRoster(you: string, participants: Participant[]): void {
    this.you = you;
    this.participants = participants;
    this.announcements.saw(participants);
    this.e2ee?.announce(participants);
    const ids = new Set(participants.map((p) => p.id));
    for (const id of [...this.firstSeen.keys()]) if (!ids.has(id)) this.firstSeen.delete(id);
    this.refresh();
  }

  /** What tests read of E2EE (`window.__sealroom.e2ee`): status, roster, counters; never a key. */
  debug(): E2eeDebug {
    const self = this;
    return {
      get status() {
        return self.e2ee?.status ?? initialStatus(false);
      },
      get epoch() {
        return self.e2ee?.status.epoch ?? null;
      },
      get securityCode() {
        return self.e2ee?.status.securityCode ?? null;
      },
      get checkValue() {
        return self.e2ee?.status.checkValue ?? null;
      },
      get roster() {
        return self.rows.map((r) => ({ state: r.state, self: r.self, flags: r.flags, leaf: r.member?.leaf ?? null, username: r.member?.username ?? r.participant?.user_name ?? null, deviceId: r.member?.deviceId ?? r.participant?.device_id ?? null, participant: r.participant?.id ?? null }));
      },
      get sframe() {
        return self.media?.sframe ?? emptyCounts().sframe;
      },
      get chat() {
        return (self.e2ee?.chat ?? []).map((c) => ({ ...c }));
      },
      get warnings() {
        return [...self.warnings];
      },
    };
  }

  /** Shows a device or media problem next to the call (the page's status region shows errors too). */
  showNotice(message: string | null): void {
    this.notice.hidden = message === null;
    setText(this.notice, message ?? '');
  }

  /** Redraws what changed from the roster and the media state. */
  refresh(): void {
    const m = this.media;
    const state: ConnectionState = m ? m.state : 'failed';
    setText(this.status, `Audio and video: ${STATE_TEXT[state]}`);
    setData(this.status, 'state', state);
    if (m?.deviceNotice && this.notice.hidden) this.showNotice(m.deviceNotice);

    if (m) {
      const busy = m.busy || state === 'closed';
      setText(this.muteButton, m.local.audioMuted ? 'Unmute microphone' : 'Mute microphone');
      setData(this.muteButton, 'muted', String(m.local.audioMuted));
      setText(this.cameraButton, m.local.videoMuted ? 'Turn camera on' : 'Turn camera off');
      setData(this.cameraButton, 'off', String(m.local.videoMuted));
      setText(this.screenButton, m.local.screen ? 'Stop sharing screen' : 'Share screen');
      setData(this.screenButton, 'sharing', String(m.local.screen));
      for (const b of [this.muteButton, this.cameraButton, this.screenButton]) {
        setData(b, 'busy', String(busy));
        if (busy) {
          b.setAttribute('aria-disabled', 'true');
          b.setAttribute('aria-busy', 'true');
        } else {
          b.removeAttribute('aria-disabled');
          b.removeAttribute('aria-busy');
        }
      }
      fillSelect(this.micSelect, m.mics, m.micId, 'No microphone found');
      fillSelect(this.cameraSelect, m.cams, m.camId, 'No camera found');
    }

    // The roster from our MLS state joined with the server's list; warnings; tile identities.
    const status = this.e2ee?.status ?? initialStatus(false);
    const keyed = status.phase === 'member';
    const members = keyed ? status.members : [];
    // "No keys" counts from when a participant was last without a leaf (it may lose its leaf
    // later, e.g. when its connection is replaced), not from when it first appeared.
    const now = performance.now();
    for (const r of joinRoster(members, this.participants, null, new Map(), now, false)) {
      if (!r.participant) continue;
      if (r.member) this.firstSeen.delete(r.participant.id);
      else if (!this.firstSeen.has(r.participant.id)) this.firstSeen.set(r.participant.id, now);
    }
    this.rows = joinRoster(members, this.participants, this.you || null, this.firstSeen, now, keyed);
    if (keyed && this.level === 'restricted') this.checkAnnounced(now);
    const identities = new Map<string, TileIdentity>();
    for (const p of this.participants) {
      if (p.id === this.you) {
        const me = members.find((x) => x.self) ?? null;
        identities.set(p.id, { leaf: me?.leaf ?? null, member: me, mismatch: me !== null && (me.username !== p.user_name || me.deviceId !== p.device_id), stalled: false });
      } else {
        identities.set(p.id, tileIdentity(p, m?.midsOf(p.id) ?? [], m?.sframe.byMid ?? {}, members));
      }
    }
    this.warnings = this.computeWarnings(status.failure?.message ?? null, keyed, identities);
    this.security.update(status, this.rows, this.warnings, this.e2ee?.chat ?? []);

    // Tiles: self first, then the others in roster order.
    const ordered = [...this.participants.filter((p) => p.id === this.you), ...this.participants.filter((p) => p.id !== this.you)];
    const keep = new Set(ordered.map((p) => p.id));
    for (const [id, tile] of this.tiles) {
      if (!keep.has(id)) {
        tile.dispose();
        this.tiles.delete(id);
      }
    }
    let previous: Element | null = null;
    for (const p of ordered) {
      const isSelf = p.id === this.you;
      let tile = this.tiles.get(p.id);
      if (!tile) {
        tile = new Tile(p, isSelf);
        this.tiles.set(p.id, tile);
      }
      // Keep DOM order without detaching tiles that are already in place.
      const want: ChildNode | null = previous ? previous.nextSibling : this.grid.firstChild;
      if (want !== tile.root) this.grid.insertBefore(tile.root, want);
      previous = tile.root;
      tile.render(this.tileData(p, isSelf, identities.get(p.id) ?? { leaf: null, member: null, mismatch: false, stalled: false }, keyed));
    }
  }

  /**
   * DESIGN §4 `restricted`, T4: a member in our MLS group that the server does not announce (a
   * ghost) ends our participation, as an unverified one does. Outside this redraw: failing
   * redraws the page (and may end this view).
   */
  private checkAnnounced(now: number): void {
    if (this.unannouncedFailed || !this.e2ee) return;
    const v = this.announcements.check(this.rows, now);
    if (!v) return;
    this.unannouncedFailed = true;
    const m = v.row.member;
    if (!m) return;
    const message = unannouncedMessage(m, v.neverAnnounced);
    const session = this.e2ee;
    queueMicrotask(() => session.failClosed('unannounced-member', message));
  }

  private computeWarnings(failure: string | null, keyed: boolean, identities: Map<string, TileIdentity>): string[] {
    const out: string[] = [];
    if (failure) out.push(failure);
    for (const r of this.rows) {
      if (r.state === 'verified' || r.state === 'joining') continue;
      const who = r.member ? memberName(r.member) : r.participant ? `${r.participant.display_name} (${r.participant.user_name})` : 'someone';
      out.push(`${who}: ${r.flags.join('; ')}`);
    }
    for (const p of this.participants) {
      if (p.id === this.you) continue;
      const id = identities.get(p.id);
      if (!id) continue;
      const name = id.member ? memberName(id.member) : `${p.display_name} (${p.user_name}, as the server says)`;
      if (keyed && id.stalled) out.push(`${name} sends, but nothing has decrypted for 2 seconds.`);
      if (id.mismatch) out.push(`The media the server attributes to ${p.display_name} (${p.user_name}) is encrypted by ${memberName(id.member)}.`);
    }
    return out;
  }

  private tileData(p: Participant, isSelf: boolean, identity: TileIdentity, keyed: boolean): TileData {
    const m = this.media;
    if (isSelf) {
      return {
        participant: p,
        isSelf,
        audioMuted: m ? m.local.audioMuted : true,
        videoMuted: m ? m.local.videoMuted : true,
        screen: m ? m.local.screen : false,
        camera: m?.camTrack ?? null,
        screenTrack: m?.screenTrack ?? null,
        mic: null,
        screenAudio: null,
        quality: m ? (m.state === 'connected' ? m.selfQuality : 'connecting') : 'connecting',
        active: m !== null && m.speaker === p.id,
        away: false,
        identity,
        keyed,
      };
    }
    return {
      participant: p,
      isSelf,
      audioMuted: p.audio_muted,
      videoMuted: p.video_muted,
      screen: p.screen,
      camera: m?.remoteTrack(p.id, 'camera') ?? null,
      screenTrack: m?.remoteTrack(p.id, 'screen') ?? null,
      mic: m?.remoteTrack(p.id, 'microphone') ?? null,
      screenAudio: m?.remoteTrack(p.id, 'screen_audio') ?? null,
      quality: m?.quality.get(p.id) ?? 'connecting',
      active: m !== null && m.speaker === p.id && !p.away,
      away: p.away,
      identity,
      keyed,
    };
  }

  dispose(): void {
    window.clearInterval(this.ticker);
    for (const t of this.tiles.values()) t.dispose();
    this.tiles.clear();
    this.root.remove();
  }
}

/** Device options; rebuilt only when the list or the choice changed (keeps focus and choice). */
function fillSelect(select: HTMLSelectElement, devices: MediaDeviceInfo[], chosen: string | null, none: string): void {
  const key = JSON.stringify([devices.map((d) => [d.deviceId, d.label]), chosen]);
  if (select.dataset['key'] === key) return;
  select.dataset['key'] = key;
  select.replaceChildren();
  if (devices.length === 0) {
    select.append(h('option', { value: '' }, none));
    select.disabled = true;
    return;
  }
  select.disabled = false;
  devices.forEach((d, i) => {
    select.append(h('option', { value: d.deviceId }, d.label || `${d.kind === 'audioinput' ? 'Microphone' : 'Camera'} ${i + 1}`));
  });
  if (chosen && devices.some((d) => d.deviceId === chosen)) select.value = chosen;
}
