// app.js — Veza jam reference browser client: joins a veza-sfu session over the signaling
// WebSocket, publishes the microphone on a "publisher" RTCPeerConnection (which also carries the
// "chat" data channel), plays everyone else from a server-offered "subscriber" connection, and
// shows levels, delays and chat. Plain ES module: no build step, no dependencies.

import { recording, onRecordingStarted, onRecordingStopped, renderRecording, exportStems } from './recording.js';

const PROTOCOL_VERSION = 1;
const CHAT_LABEL = 'chat';
const PING_INTERVAL_MS = 2000;
const STATS_INTERVAL_MS = 500;
const STATUS_LINES = 8;
// ICE "disconnected" often heals by itself (a lost burst); lasting this long, the path is gone
// (a network change) and only an ICE restart finds a new one before the server gives up.
const ICE_RESTART_AFTER_DISCONNECTED_MS = 2000;

// Music, not voice: every browser "voice" filter would damage an instrument's sound.
const MIC_CONSTRAINTS = {
  echoCancellation: false,
  noiseSuppression: false,
  autoGainControl: false,
  channelCount: 2,
  sampleRate: 48000,
};

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------
// Observable state. Exposed on window.veza so automated tests can inspect it.

const state = {
  phase: 'idle', // idle | connecting | joined | left | error
  joined: false,
  signaling: 'closed', // closed | connecting | open
  publisher: { ice: 'none', connection: 'none' },
  subscriber: { ice: 'none', connection: 'none' },
  sessionId: null,
  protocolVersion: null,
  self: null, // my ParticipantInfo from `joined`
  grants: null,
  codec: null,
  muted: false,
  publishing: false, // a microphone track is on the publisher connection
  chatOpen: false,
  rtt: { signalingMs: null, serverMs: null },
  /** Opus packet time my browser actually sends, measured from outbound-rtp packetsSent. */
  sendPtimeMs: null,
  lastError: null, // {code, message} of the last error shown
};

/** id -> {id, user, name, grants, tracks, isSelf, level, rttMs, delayMs}; includes me. */
const participants = new Map();
const pcs = { publisher: null, subscriber: null };
/** Chat messages shown, oldest first: {id, from: {id, name}, text, ts}. */
const chatLog = [];

let joinDeferred = makeDeferred();

const veza = {
  state,
  participants,
  pcs,
  chatLog,
  joined: joinDeferred.promise, // resolves with the `joined` message; replaced on each join
  join: (token) => join(token),
  leave: () => leave(),
  sendChat: (text) => sendChat(text),
  setMuted: (muted) => setMuted(muted),
  // What a lost network path triggers by itself (watchIce), on demand: for tests.
  restartIce: () => {
    for (const role of ['publisher', 'subscriber']) if (session && pcs[role]) restartIce(session, role, pcs[role]);
  },
  recording,
};
window.veza = veza;

/** The live session's private plumbing; null when not connected. */
let session = null;

function makeDeferred() {
  const d = { settled: false };
  d.promise = new Promise((resolve, reject) => {
    d.resolve = (v) => { d.settled = true; resolve(v); };
    d.reject = (e) => { d.settled = true; reject(e); };
  });
  // Mark it handled so a failed join never logs an unhandled rejection; awaiters still see it.
  d.promise.catch(() => {});
  return d;
}

function newSession(token) {
  return {
    token,
    ws: null,
    iceServers: [], // from `joined`
    leaving: false,
    gotServerError: false,
    localStream: null,
    chatChannel: null,
    chatIds: new Set(),
    // Candidates wait until their connection's first offer/answer has gone out.
    signaled: { publisher: false, subscriber: false },
    pendingCandidates: { publisher: [], subscriber: [] },
    subscriberQueue: Promise.resolve(), // server offers are handled strictly one at a time
    audioEls: new Map(), // participant id -> <audio>
    trackOwner: new Map(), // receiver track id -> participant id
    jitterPrev: new Map(), // receiver track id / SSRC -> last {delay, count}
    sentPrev: null, // last outbound-rtp {packetsSent, timestamp}, for the packet time
    timers: [],
    statsBusy: false,
    // Per connection: a pending "still disconnected?" timer, and whether a restart is under way.
    iceWatch: { publisher: null, subscriber: null },
    iceRestarting: { publisher: false, subscriber: false },
  };
}

// ---------------------------------------------------------------------------------------------
// Joining and leaving.

function wsUrl(token) {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  return `${scheme}://${location.host}/v1/ws?access_token=${encodeURIComponent(token)}`;
}

function join(rawToken) {
  const token = String(rawToken ?? '').trim();
  if (!token) {
    showStatus('Paste an access token first.', 'error');
    return veza.joined;
  }
  if (session) return veza.joined;
  if (joinDeferred.settled) {
    joinDeferred = makeDeferred();
    veza.joined = joinDeferred.promise;
  }
  const s = newSession(token);
  session = s;
  state.phase = 'connecting';
  state.lastError = null;
  clearError();
  setSignaling('connecting');
  showStatus('Connecting…');

  openSocket(s, wsUrl(token));
  updateControls();
  return veza.joined;
}

function openSocket(s, url) {
  const ws = new WebSocket(url);
  s.ws = ws;
  // Every handler checks it still belongs to the live session and socket: a late event from
  // an old socket must not disturb a newer one.
  const live = () => s === session && s.ws === ws;
  ws.onopen = () => { if (live()) setSignaling('open'); };
  ws.onmessage = (ev) => { if (live()) onSignal(s, ev.data); };
  ws.onclose = (ev) => { if (live()) onSocketClose(s, ev); };
}

/**
 * The signaling socket dropped while joined: media goes on, and the server keeps our place for
 * `resume_grace_ms`. Reconnect with the resume token, backing off, until the grace runs out.
 */
function reconnect(s) {
  const deadline = s.resume.droppedAt + s.resume.graceMs;
  const delay = Math.min(250 * 2 ** s.resume.attempts, 2000);
  if (Date.now() + delay >= deadline) return false;
  s.resume.attempts += 1;
  setSignaling('reconnecting');
  showStatus('Connection to the server lost; reconnecting… (your audio keeps flowing)', 'error');
  setTimeout(() => {
    if (s !== session) return;
    openSocket(s, `${wsUrl(s.token)}&resume=${encodeURIComponent(s.resume.token)}`);
  }, delay);
  return true;
}

function onResumed(s) {
  s.resume.attempts = 0;
  s.resume.droppedAt = null;
  for (const msg of s.resume.outbox.splice(0)) send(s, msg);
  showStatus('Reconnected to the server.');
}

function leave() {
  const s = session;
  if (!s) return;
  s.leaving = true;
  if (!state.joined) joinDeferred.reject(new Error('left before joining'));
  if (s.resume?.droppedAt) sayLeaveOnResume(s);
  else send(s, { type: 'leave' });
  teardown(s);
  state.phase = 'left';
  showStatus('You left the session.');
  render();
}

/**
 * Leaving while the signaling socket is down: the server still holds our place for the
 * reconnect grace, and the others would hear of our going only when it runs out. Resume once,
 * just to say so (a close frame alone also counts as leaving).
 */
function sayLeaveOnResume(s) {
  const ws = new WebSocket(`${wsUrl(s.token)}&resume=${encodeURIComponent(s.resume.token)}`);
  ws.onopen = () => {
    ws.send(JSON.stringify({ type: 'leave' }));
    ws.close(1000, 'bye');
  };
}

/** The Veza API ended the session: the server closes the socket next; say why first. */
function onSessionEnded(s, m) {
  s.sessionEnded = true;
  showStatus(`The session has ended (${m.reason}).`, 'error');
  showError('The session has ended', `The organiser ended this session (${m.reason}).`);
}

/**
 * The Veza API changed what we may do. Promoted to publish: add the microphone and offer again
 * on the publisher connection. Demoted: stop sending (the server already unpublished us).
 */
async function onGrantsChanged(s, m) {
  const could = state.grants?.publish !== false;
  state.grants = m.grants;
  const pc = pcs.publisher;
  if (m.grants.publish && !could && pc && !state.publishing) {
    await addMicrophone(s, pc);
    if (s !== session || !state.publishing) return render();
    const offer = await pc.createOffer();
    await pc.setLocalDescription({ type: 'offer', sdp: preferStereoOpus(offer.sdp) });
    send(s, { type: 'offer', sdp: pc.localDescription.sdp });
    showStatus('You may play now: your instrument is live.');
  } else if (!m.grants.publish && could && s.localStream) {
    s.localStream.getTracks().forEach((t) => t.stop());
    state.publishing = false;
    showStatus('You are now listening only.');
  }
  render();
}

function onSocketClose(s, ev) {
  const wasJoined = state.joined;
  // 1006 (no close frame) is a dropped connection, worth resuming; the server closes with a
  // frame when it means it (kicked, too slow, session over), and so does a refused resume.
  if (wasJoined && !s.leaving && !s.sessionEnded && !s.resumeRefused && s.resume?.token && ev.code === 1006) {
    s.resume.droppedAt ??= Date.now();
    if (reconnect(s)) return;
  }
  teardown(s);
  if (!wasJoined) {
    state.phase = 'error';
    joinDeferred.reject(new Error('connection closed before joined'));
    if (s.gotServerError) {
      // The server sent an error frame (e.g. session_full) before closing: that is the reason.
      showStatus('Connection closed by the server before joining (see the error above).', 'error');
    } else {
      showStatus('Could not open the signaling connection; asking the server why…', 'error');
      explainRefusal(s.token);
    }
  } else if (s.sessionEnded) {
    state.phase = 'left';
  } else if (!s.leaving) {
    state.phase = 'error';
    const why = ev.reason ? `: ${ev.reason}` : '';
    showStatus(`Disconnected from server (code ${ev.code}${why}).`, 'error');
    showError('Disconnected from the server', `The connection closed (code ${ev.code}${why}). Join again to continue.`);
  }
  render();
}

/**
 * The browser hides why an upgrade failed; the same URL as a plain GET tells us: the server
 * answers 401 {code, message} for a refused token, 503 {code: "draining"} while draining and
 * 503 {code: "not_ready"} while not ready.
 */
async function explainRefusal(token) {
  let res;
  try {
    res = await fetch(`/v1/ws?access_token=${encodeURIComponent(token)}`, {
      headers: { Accept: 'application/json' },
      cache: 'no-store',
    });
  } catch {
    state.lastError = { code: 'unreachable', message: 'no answer from the server' };
    showError('The server is unreachable', 'Check your network connection and that the server is running, then join again.');
    return;
  }
  const body = await res.json().catch(() => null);
  if (body && typeof body.code === 'string') {
    reportServerError(body.code, body.message, `HTTP ${res.status}`);
  } else if (res.ok || res.status === 426) {
    // 426: the token is fine, only the upgrade was missing; so the WebSocket itself was blocked.
    state.lastError = { code: 'websocket_blocked', message: `HTTP ${res.status}` };
    showError('Could not open a WebSocket', 'Your token is valid, but the WebSocket connection failed; a proxy or firewall may block WebSockets.');
  } else {
    state.lastError = { code: 'http_error', message: `HTTP ${res.status}` };
    showError('The server refused the connection', `It answered HTTP ${res.status}.`);
  }
}

/** Closes everything a session opened and forgets it. Safe to call more than once. */
function teardown(s) {
  if (session !== s) return;
  session = null;
  s.timers.forEach(clearInterval);
  Object.values(s.iceWatch).forEach(clearTimeout);
  try {
    if (s.ws.readyState <= WebSocket.OPEN) s.ws.close(1000, 'bye');
  } catch { /* already closing */ }
  if (s.chatChannel) s.chatChannel.close();
  for (const role of ['publisher', 'subscriber']) {
    if (pcs[role]) pcs[role].close();
    pcs[role] = null;
    state[role] = { ice: 'none', connection: 'none' };
  }
  s.localStream?.getTracks().forEach((t) => t.stop());
  for (const pid of [...s.audioEls.keys()]) removeAudio(s, pid);
  participants.clear();
  $('participants').replaceChildren();
  Object.assign(state, {
    joined: false,
    sessionId: null,
    self: null,
    grants: null,
    codec: null,
    publishing: false,
    chatOpen: false,
    muted: false,
    rtt: { signalingMs: null, serverMs: null },
    sendPtimeMs: null,
  });
  setSignaling('closed');
}

// ---------------------------------------------------------------------------------------------
// Signaling.

function send(s, msg) {
  // While reconnecting, messages wait for the resumed socket (an answer must not be lost).
  if (s.resume?.droppedAt) {
    s.resume.outbox.push(msg);
    return true;
  }
  if (!s.ws || s.ws.readyState !== WebSocket.OPEN) return false;
  s.ws.send(JSON.stringify(msg));
  return true;
}

const signalHandlers = {
  joined: onJoined,
  resumed: onResumed,
  answer: onPublisherAnswer,
  offer: onSubscriberOffer,
  participant_joined: (s, m) => upsertParticipant(m.participant, false),
  participant_left: onParticipantLeft,
  track_published: onTrackPublished,
  track_unpublished: onTrackUnpublished,
  track_muted: onTrackMuted,
  recording_started: (s, m) => onRecordingStarted(m),
  recording_stopped: (s, m) => onRecordingStopped(m),
  pong: onPong,
  // The server is shutting down: nothing is cut yet; say so, so the band can finish the piece.
  draining: (s, m) => showStatus(`Server restarting: ${m.message}`, 'error'),
  session_ended: onSessionEnded,
  grants_changed: onGrantsChanged,
  error: (s, m) => {
    s.gotServerError = true;
    if (m.code === 'resume_expired') s.resumeRefused = true;
    reportServerError(m.code, m.message);
  },
};

function onSignal(s, data) {
  let msg;
  try {
    msg = JSON.parse(data);
  } catch {
    showStatus('Ignored a signaling frame that is not JSON.', 'error');
    return;
  }
  const handler = signalHandlers[msg?.type];
  if (!handler) {
    // Newer servers may add message types; ignoring them keeps old clients working.
    console.debug('veza: unhandled signaling message', msg);
    return;
  }
  try {
    const result = handler(s, msg);
    if (result instanceof Promise) result.catch((err) => reportFailure(`Handling "${msg.type}"`, err));
  } catch (err) {
    reportFailure(`Handling "${msg.type}"`, err);
  }
  render();
}

function onJoined(s, m) {
  if (m.protocol_version !== PROTOCOL_VERSION) {
    showStatus(`Server speaks protocol ${m.protocol_version}, this page ${PROTOCOL_VERSION}; things may break.`, 'error');
  }
  Object.assign(state, {
    phase: 'joined',
    joined: true,
    sessionId: m.session_id,
    protocolVersion: m.protocol_version,
    self: m.participant,
    grants: m.participant.grants,
    codec: m.codec,
  });
  s.iceServers = (m.ice_servers ?? []).map(toIceServer);
  s.resume = { token: m.resume_token, graceMs: m.resume_grace_ms ?? 0, droppedAt: null, attempts: 0, outbox: [] };

  participants.clear();
  $('participants').replaceChildren();
  upsertParticipant(m.participant, true);
  for (const p of m.participants ?? []) upsertParticipant(p, false);

  resetChat();
  for (const c of m.chat_history ?? []) onChatMessage(s, c);

  clearError();
  showStatus(`Joined session ${m.session_id} as ${m.participant.name}.`);
  joinDeferred.resolve(m);

  startTimers(s);
  startPublisher(s).catch((err) => reportFailure('Publishing', err));
}

function toIceServer({ urls, username, credential }) {
  const server = { urls };
  if (username != null) server.username = username;
  if (credential != null) server.credential = credential;
  return server;
}

function startTimers(s) {
  const ping = () => send(s, { type: 'ping', ts: performance.now() });
  ping();
  s.timers.push(setInterval(ping, PING_INTERVAL_MS));
  s.timers.push(setInterval(() => pollStats(s), STATS_INTERVAL_MS));
}

function onPong(s, m) {
  // ts is our own performance.now() echoed back, so the difference is the round trip.
  if (typeof m.ts === 'number') state.rtt.signalingMs = performance.now() - m.ts;
}

function reportServerError(code, message, where) {
  state.lastError = { code, message };
  const suffix = where ? ` (${where})` : '';
  showStatus(`Server error ${code}: ${message ?? ''}${suffix}`, 'error');
  const explained = explainError(code, message);
  if (explained) showError(explained.title, explained.detail);
}

/**
 * Plain words for the errors that keep you out of a session; null for those that don't (they
 * stay in the status log). `message` is the server's own detail, shown as given.
 */
function explainError(code, message) {
  const detail = (advice) => `${advice}${message ? ` (server: ${code}: ${message})` : ` (${code})`}`;
  switch (code) {
    case 'token_missing':
      return { title: 'No access token', detail: detail('Open the invite link you were given, or paste its token above.') };
    case 'token_expired':
      return { title: 'Your access token has expired', detail: detail('Ask for a fresh invite link.') };
    case 'token_not_yet_valid':
      return { title: 'Your access token is not valid yet', detail: detail("Check this computer's clock, or wait a moment.") };
    case 'token_malformed':
    case 'token_bad_signature':
    case 'token_wrong_algorithm':
    case 'token_wrong_issuer':
    case 'token_wrong_audience':
    case 'token_invalid_claims':
      return { title: 'Your access token was rejected', detail: detail('The server does not accept this token; ask for a new invite link.') };
    case 'draining':
      return {
        title: 'This server is restarting',
        detail: detail('Join again in a moment: another server will take you.'),
      };
    case 'not_ready':
      return {
        title: 'The server is not accepting joins right now',
        detail: detail('It is starting up or draining before a restart. Try again in a minute.'),
      };
    case 'session_full':
      return { title: 'This session is full', detail: detail('Ask someone to leave, or the host to raise the limit.') };
    case 'server_full':
      return { title: 'The server is full', detail: detail('Try again later.') };
    case 'session_not_found':
      return { title: 'No such session', detail: detail('It may have ended; ask for a new invite link.') };
    case 'publish_not_allowed':
      return { title: 'You are here to listen', detail: detail('Your token does not allow sending audio.') };
    default:
      return null;
  }
}

function reportFailure(what, err) {
  console.error(`veza: ${what} failed`, err);
  showStatus(`${what} failed: ${err?.message ?? err}`, 'error');
}

// ---------------------------------------------------------------------------------------------
// Peer connections.

function newPeerConnection(s, role) {
  const pc = new RTCPeerConnection({ iceServers: s.iceServers ?? [] });
  pc.onicecandidate = (ev) => {
    // A null candidate (or an empty one, in Firefox) only marks the end of gathering.
    if (s !== session || !ev.candidate || !ev.candidate.candidate) return;
    sendCandidate(s, role, ev.candidate.toJSON());
  };
  const onState = () => {
    if (pcs[role] !== pc) return;
    const connection = pc.connectionState ?? pc.iceConnectionState;
    if (connection === 'failed' && state[role].connection !== 'failed') {
      showStatus(`The ${role} connection failed.`, 'error');
    }
    state[role] = { ice: pc.iceConnectionState, connection };
    watchIce(s, role, pc);
    renderHeader();
  };
  pc.oniceconnectionstatechange = onState;
  pc.onconnectionstatechange = onState;
  pc.onsignalingstatechange = onState; // a restart put off by an outstanding offer
  pcs[role] = pc;
  onState();
  return pc;
}

/**
 * Restarts ICE when a connection's path is gone ("failed", or "disconnected" for a while): a new
 * network (Wi-Fi to cellular, a new address) then keeps the session. One restart at a time per
 * connection, until it connects again.
 */
function watchIce(s, role, pc) {
  const ice = pc.iceConnectionState;
  if (ice === 'connected' || ice === 'completed') s.iceRestarting[role] = false;
  if (ice !== 'disconnected') {
    clearTimeout(s.iceWatch[role]);
    s.iceWatch[role] = null;
  }
  if (ice === 'failed') restartIce(s, role, pc);
  else if (ice === 'disconnected' && !s.iceWatch[role]) {
    s.iceWatch[role] = setTimeout(() => {
      s.iceWatch[role] = null;
      if (pcs[role] === pc && pc.iceConnectionState === 'disconnected') restartIce(s, role, pc);
    }, ICE_RESTART_AFTER_DISCONNECTED_MS);
  }
}

async function restartIce(s, role, pc) {
  if (s !== session || s.iceRestarting[role]) return;
  s.iceRestarting[role] = true;
  showStatus(`Network change? Reconnecting the ${role} connection.`);
  if (role === 'subscriber') {
    send(s, { type: 'ice_restart' }); // the server offers with new credentials; answered as usual
    return;
  }
  // We offer the publisher connection: a restart is an offer with new credentials. An offer
  // already outstanding gets its answer first; back in "stable", onState looks again.
  if (pc.signalingState !== 'stable') {
    s.iceRestarting[role] = false;
    return;
  }
  try {
    const offer = await pc.createOffer({ iceRestart: true });
    await pc.setLocalDescription({ type: 'offer', sdp: preferStereoOpus(offer.sdp) });
    if (s === session) send(s, { type: 'offer', sdp: pc.localDescription.sdp });
  } catch (err) {
    s.iceRestarting[role] = false;
    reportFailure('ICE restart', err);
  }
}

function sendCandidate(s, role, candidate) {
  const msg = { type: 'candidate', target: role, candidate };
  if (s.signaled[role]) send(s, msg);
  else s.pendingCandidates[role].push(msg);
}

/** After the first offer/answer of a connection is sent, its held-back candidates may follow. */
function markSignaled(s, role) {
  if (s.signaled[role]) return;
  s.signaled[role] = true;
  for (const msg of s.pendingCandidates[role].splice(0)) send(s, msg);
}

async function startPublisher(s) {
  const pc = newPeerConnection(s, 'publisher');
  if (state.grants?.publish !== false) await addMicrophone(s, pc);
  if (s !== session) return;

  s.chatChannel = pc.createDataChannel(CHAT_LABEL, { ordered: true });
  wireChat(s, s.chatChannel);

  const offer = await pc.createOffer();
  await pc.setLocalDescription({ type: 'offer', sdp: preferStereoOpus(offer.sdp) });
  if (s !== session) return;
  send(s, { type: 'offer', sdp: pc.localDescription.sdp });
  markSignaled(s, 'publisher');
}

async function addMicrophone(s, pc) {
  let stream;
  try {
    if (!navigator.mediaDevices?.getUserMedia) throw new Error('needs HTTPS or localhost');
    stream = await navigator.mediaDevices.getUserMedia({ audio: MIC_CONSTRAINTS });
  } catch (err) {
    showStatus(`Microphone unavailable (${err.name ?? 'Error'}: ${err.message}); you are listening only.`, 'error');
    return;
  }
  if (s !== session) {
    stream.getTracks().forEach((t) => t.stop());
    return;
  }
  s.localStream = stream;
  const maxBitrate = state.codec?.max_average_bitrate;
  for (const track of stream.getAudioTracks()) {
    track.enabled = !state.muted;
    // Caps the encoder at the server's music profile; "high" asks the browser to favour audio.
    const encoding = { priority: 'high', networkPriority: 'high' };
    if (maxBitrate) encoding.maxBitrate = maxBitrate;
    pc.addTransceiver(track, { direction: 'sendonly', streams: [stream], sendEncodings: [encoding] });
  }
  state.publishing = stream.getAudioTracks().length > 0;
}

/**
 * Adds stereo=1;sprop-stereo=1 to every Opus fmtp line. Browsers otherwise advertise mono Opus,
 * and Chrome then downmixes what it decodes; for instruments panned in stereo that is a loss.
 */
function preferStereoOpus(sdp) {
  if (state.codec && state.codec.channels < 2) return sdp;
  const opusPts = [...sdp.matchAll(/^a=rtpmap:(\d+) opus\/48000/gim)].map((m) => m[1]);
  let out = sdp;
  for (const pt of opusPts) {
    // In multiline mode `$` stops before "\r\n", so the line ending is left untouched.
    out = out.replace(new RegExp(`^(a=fmtp:${pt} )(.*)$`, 'gm'), (line, head, params) => {
      const keys = new Set(params.split(';').map((p) => p.split('=')[0].trim()));
      const extra = ['stereo', 'sprop-stereo'].filter((k) => !keys.has(k)).map((k) => `${k}=1`);
      return extra.length ? `${head}${params};${extra.join(';')}` : line;
    });
  }
  return out;
}

async function onPublisherAnswer(s, m) {
  const pc = pcs.publisher;
  if (!pc || pc.signalingState !== 'have-local-offer') {
    showStatus('Ignored an answer with no offer outstanding.', 'error');
    return;
  }
  await pc.setRemoteDescription({ type: 'answer', sdp: m.sdp });
  s.iceRestarting.publisher = false; // a restart, if one was asked, is negotiated
}

function onSubscriberOffer(s, m) {
  // Renegotiations can arrive back to back; each must finish before the next starts.
  s.subscriberQueue = s.subscriberQueue
    .then(() => answerSubscriber(s, m.sdp))
    .catch((err) => reportFailure('Subscriber negotiation', err));
}

async function answerSubscriber(s, sdp) {
  if (s !== session) return;
  const pc = pcs.subscriber ?? newSubscriber(s);
  // The server repeats an unanswered offer after a reconnect; if our answer to it was lost on
  // the way, send that answer again rather than renegotiating.
  if (pc.signalingState === 'stable' && pc.currentRemoteDescription?.sdp === sdp) {
    send(s, { type: 'answer', sdp: pc.currentLocalDescription.sdp });
    return;
  }
  await pc.setRemoteDescription({ type: 'offer', sdp });
  const answer = await pc.createAnswer();
  await pc.setLocalDescription({ type: 'answer', sdp: preferStereoOpus(answer.sdp) });
  if (s !== session) return;
  send(s, { type: 'answer', sdp: pc.localDescription.sdp });
  markSignaled(s, 'subscriber');
  s.iceRestarting.subscriber = false; // a restart, if one was asked, is negotiated
}

function newSubscriber(s) {
  const pc = newPeerConnection(s, 'subscriber');
  pc.ontrack = (ev) => { if (s === session) onRemoteTrack(s, ev); };
  return pc;
}

// ---------------------------------------------------------------------------------------------
// Remote audio.

function onRemoteTrack(s, ev) {
  const { track } = ev;
  if (track.kind !== 'audio') return;
  // The server names each stream after the participant whose audio it carries.
  const stream = ev.streams[0] ?? new MediaStream([track]);
  const pid = ev.streams[0]?.id ?? ownerOfServerTrack(track.id) ?? `unknown:${track.id}`;
  s.trackOwner.set(track.id, pid);
  attachAudio(s, pid, stream);
  const prune = () => { if (s === session) pruneAudio(s, pid); };
  track.addEventListener('ended', prune);
  stream.addEventListener('removetrack', prune);
}

function ownerOfServerTrack(trackId) {
  for (const p of participants.values()) {
    if (p.tracks.some((t) => t.id === trackId)) return p.id;
  }
  return null;
}

function attachAudio(s, pid, stream) {
  let el = s.audioEls.get(pid);
  if (!el) {
    el = document.createElement('audio');
    el.autoplay = true;
    el.dataset.participantId = pid;
    $('audio-sinks').append(el);
    s.audioEls.set(pid, el);
  }
  if (el.srcObject !== stream) el.srcObject = stream;
  playAudio(el);
}

function playAudio(el) {
  el.play().catch((err) => {
    if (err.name !== 'NotAllowedError') return; // e.g. AbortError when the source changes
    // Autoplay policy: sound needs one user gesture on this page (common with ?token= joins).
    showStatus('Your browser blocked audio playback: click anywhere on the page to hear the others.', 'error');
    document.addEventListener('click', resumeAllAudio, { once: true });
  });
}

function resumeAllAudio() {
  if (!session) return;
  for (const el of session.audioEls.values()) el.play().catch(() => {});
}

/** Drops a participant's <audio> once its stream no longer has a live track. */
function pruneAudio(s, pid) {
  const stream = s.audioEls.get(pid)?.srcObject;
  if (!stream || stream.getTracks().every((t) => t.readyState === 'ended')) removeAudio(s, pid);
}

function removeAudio(s, pid) {
  const el = s.audioEls.get(pid);
  if (!el) return;
  el.pause();
  el.srcObject = null;
  el.remove();
  s.audioEls.delete(pid);
}

// ---------------------------------------------------------------------------------------------
// Participants.

function upsertParticipant(p, isSelf) {
  if (!p?.id) return;
  const old = participants.get(p.id);
  const info = {
    id: p.id,
    user: p.user,
    name: p.name,
    grants: p.grants,
    tracks: (p.tracks ?? []).map((t) => ({ ...t })),
    isSelf: isSelf || p.id === state.self?.id,
    level: old?.level ?? 0,
    rttMs: old?.rttMs ?? null,
    delayMs: old?.delayMs ?? null,
    jitterMs: old?.jitterMs ?? null,
  };
  participants.set(p.id, info);
  renderParticipant(info);
}

function onParticipantLeft(s, m) {
  // About ourselves: the Veza API removed us (kicked). The socket closes next; do not resume.
  if (m.participant_id === state.self?.id) s.resumeRefused = true;
  participants.delete(m.participant_id);
  participantLi(m.participant_id)?.remove();
  removeAudio(s, m.participant_id);
}

function onTrackPublished(s, m) {
  const p = participants.get(m.participant_id);
  if (!p) return;
  p.tracks = p.tracks.filter((t) => t.id !== m.track.id).concat({ ...m.track });
  renderParticipant(p);
}

function onTrackUnpublished(s, m) {
  const p = participants.get(m.participant_id);
  if (!p) return;
  p.tracks = p.tracks.filter((t) => t.id !== m.track_id);
  renderParticipant(p);
}

function onTrackMuted(s, m) {
  const p = participants.get(m.participant_id);
  const track = p?.tracks.find((t) => t.id === m.track_id);
  if (!track) return;
  track.muted = m.muted;
  renderParticipant(p);
}

function isMuted(p) {
  if (p.isSelf && state.publishing) return state.muted;
  return p.tracks.length > 0 && p.tracks.every((t) => t.muted);
}

function setMuted(muted) {
  const s = session;
  if (!s || !state.joined) return;
  state.muted = Boolean(muted);
  // Disabling the track makes the browser send silence at once, even before the server relays
  // the mute to everyone else.
  s.localStream?.getAudioTracks().forEach((t) => { t.enabled = !state.muted; });
  send(s, { type: 'mute', muted: state.muted });
  const me = participants.get(state.self?.id);
  if (me) renderParticipant(me);
  render();
}

// ---------------------------------------------------------------------------------------------
// Chat.

function wireChat(s, ch) {
  ch.onopen = () => { if (s === session) { state.chatOpen = true; updateControls(); } };
  ch.onclose = () => { if (s === session) { state.chatOpen = false; updateControls(); } };
  ch.onmessage = (ev) => {
    if (s !== session) return;
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      return;
    }
    onChatMessage(s, msg);
  };
}

function onChatMessage(s, msg) {
  if (msg?.type === 'error') {
    reportServerError(msg.code, msg.message, 'chat');
    appendChatNotice(`${msg.code}: ${msg.message}`);
    return;
  }
  if (msg?.type !== 'chat' || typeof msg.text !== 'string') return;
  // History and live relay could overlap around the moment of joining; ids are unique.
  if (s.chatIds.has(msg.id)) return;
  s.chatIds.add(msg.id);
  const entry = {
    id: msg.id,
    from: { id: String(msg.from?.id ?? ''), name: String(msg.from?.name ?? '?') },
    text: msg.text,
    ts: msg.ts,
  };
  chatLog.push(entry);
  appendChatMessage(entry);
}

function sendChat(text) {
  const s = session;
  const ch = s?.chatChannel;
  if (!ch || ch.readyState !== 'open') {
    showStatus('Chat is not connected yet.', 'error');
    return false;
  }
  if (!String(text ?? '').trim()) return false;
  // The server stamps sender, id and time and relays the message to everyone, us included.
  ch.send(JSON.stringify({ type: 'chat', text: String(text) }));
  return true;
}

function resetChat() {
  chatLog.length = 0;
  $('chat-log').replaceChildren();
}

function appendChatMessage(entry) {
  const row = document.createElement('div');
  row.className = 'chat-msg';
  if (entry.from.id === state.self?.id) row.classList.add('mine');
  row.dataset.chatId = String(entry.id);
  row.append(
    textSpan('chat-time', formatTime(entry.ts)),
    textSpan('chat-from', entry.from.name),
    textSpan('chat-text', entry.text),
  );
  appendToChatLog(row);
}

function appendChatNotice(text) {
  const row = document.createElement('div');
  row.className = 'chat-notice';
  row.textContent = text;
  appendToChatLog(row);
}

function appendToChatLog(row) {
  const log = $('chat-log');
  // Follow new messages only if the reader is already at the bottom.
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  log.append(row);
  if (atBottom) log.scrollTop = log.scrollHeight;
}

/** User content only ever goes in via textContent, so markup in it stays text. */
function textSpan(className, text) {
  const span = document.createElement('span');
  span.className = className;
  span.textContent = text;
  return span;
}

function formatTime(ts) {
  if (typeof ts !== 'number') return '';
  return new Date(ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

// ---------------------------------------------------------------------------------------------
// Stats: levels, RTT, delay estimates.

async function pollStats(s) {
  if (s !== session || s.statsBusy) return; // a slow getStats must not pile up calls
  s.statsBusy = true;
  try {
    const [mine, others] = await Promise.all([publisherStats(), subscriberStats(s)]);
    if (s === session) {
      measurePtime(s, mine.sent);
      applyStats(mine, others);
    }
  } catch (err) {
    console.debug('veza: stats unavailable', err);
  } finally {
    s.statsBusy = false;
  }
}

async function publisherStats() {
  const pc = pcs.publisher;
  if (!pc) return {};
  const report = await pc.getStats();
  let level = null;
  let rtcpRtt = null;
  let sent = null;
  for (const st of report.values()) {
    if (st.type === 'media-source' && st.kind === 'audio' && typeof st.audioLevel === 'number') {
      level = Math.max(level ?? 0, st.audioLevel);
    }
    // The server's RTCP receiver reports time the media path itself, every second or so;
    // ICE consent checks (the candidate pair) only every few seconds, in whole milliseconds.
    if (st.type === 'remote-inbound-rtp' && st.kind === 'audio' && st.roundTripTimeMeasurements > 0) {
      rtcpRtt = st.roundTripTime;
    }
    if (st.type === 'outbound-rtp' && st.kind === 'audio') sent = { packetsSent: st.packetsSent, timestamp: st.timestamp };
  }
  return { rtt: rtcpRtt ?? selectedPairRtt(report), level, sent };
}

/** Packet time from two outbound-rtp samples: elapsed time over packets sent in between. */
function measurePtime(s, sent) {
  if (!sent || typeof sent.packetsSent !== 'number') return;
  const prev = s.sentPrev;
  // Over at least 2 s, so timer jitter of the stats poll barely moves the figure.
  if (!prev || sent.timestamp - prev.timestamp >= 2000) {
    if (prev && sent.packetsSent > prev.packetsSent) {
      state.sendPtimeMs = (sent.timestamp - prev.timestamp) / (sent.packetsSent - prev.packetsSent);
    }
    s.sentPrev = sent;
  }
}

async function subscriberStats(s) {
  const pc = pcs.subscriber;
  const byPid = new Map(); // participant id -> {level, jitterMs}
  if (!pc) return { byPid, rtt: null };
  const rtt = selectedPairRtt(await pc.getStats());
  // Per-receiver stats tie each inbound stream to its track, hence to its participant,
  // without relying on trackIdentifier (absent or different in some browsers).
  await Promise.all(pc.getReceivers().map(async (receiver) => {
    const track = receiver.track;
    const pid = track && track.kind === 'audio' ? s.trackOwner.get(track.id) : null;
    if (!pid) return;
    const inbound = findInboundAudio(await receiver.getStats());
    if (!inbound) return;
    const entry = byPid.get(pid) ?? { level: null, jitterMs: null };
    if (typeof inbound.audioLevel === 'number') entry.level = Math.max(entry.level ?? 0, inbound.audioLevel);
    const jitterMs = jitterBufferMs(s, `${track.id}/${inbound.ssrc}`, inbound);
    if (jitterMs != null) entry.jitterMs = Math.max(entry.jitterMs ?? 0, jitterMs);
    byPid.set(pid, entry);
  }));
  return { byPid, rtt };
}

/**
 * The receiver's current inbound audio stream. The server hands an m-section whose musician
 * left to the next one (a new SSRC on the same receiver), and the earlier stream's stats may
 * linger beside it: the one that received last is the live one.
 */
function findInboundAudio(report) {
  let live = null;
  for (const st of report.values()) {
    if (st.type !== 'inbound-rtp' || (st.kind ?? st.mediaType) !== 'audio') continue;
    if (!live || (st.lastPacketReceivedTimestamp ?? 0) > (live.lastPacketReceivedTimestamp ?? 0)) live = st;
  }
  return live;
}

/** Round-trip time of the candidate pair in use, in seconds, or null. */
function selectedPairRtt(report) {
  let pair = null;
  for (const st of report.values()) {
    if (st.type === 'transport' && st.selectedCandidatePairId) pair = report.get(st.selectedCandidatePairId);
  }
  if (!pair) {
    for (const st of report.values()) {
      if (st.type === 'candidate-pair' && (st.selected || (st.nominated && st.state === 'succeeded'))) {
        pair = st;
        break;
      }
    }
  }
  return typeof pair?.currentRoundTripTime === 'number' ? pair.currentRoundTripTime : null;
}

/**
 * Average jitter-buffer delay, in ms, over the last poll interval (the cumulative average
 * would hide changes after a few minutes); the cumulative one on the first sample.
 */
function jitterBufferMs(s, trackId, st) {
  const delay = st.jitterBufferDelay;
  const count = st.jitterBufferEmittedCount;
  if (typeof delay !== 'number' || !count) return null;
  const prev = s.jitterPrev.get(trackId);
  s.jitterPrev.set(trackId, { delay, count });
  if (prev && count > prev.count) return (1000 * (delay - prev.delay)) / (count - prev.count);
  return (1000 * delay) / count;
}

function applyStats(mine, others) {
  const rttS = mine.rtt ?? others.rtt; // publisher path first: that is "my RTT to the server"
  state.rtt.serverMs = rttS == null ? null : rttS * 1000;
  for (const p of participants.values()) {
    if (p.isSelf) {
      p.level = state.muted ? 0 : (mine.level ?? 0);
      p.rttMs = state.rtt.serverMs;
      p.delayMs = null;
    } else {
      const st = others.byPid?.get(p.id);
      p.level = st?.level ?? 0;
      p.rttMs = null; // their own RTT to the server is not told to us
      p.jitterMs = st?.jitterMs ?? null;
      p.delayMs = estimateOneWayMs(state.rtt.serverMs, p.jitterMs);
    }
    renderParticipantStats(p);
  }
  renderHeader();
}

/**
 * Delay from a peer's microphone packets to my speaker: their RTT/2 + my RTT/2 (network) + my
 * jitter buffer + one packet time (the sender waits for a packet's worth of audio before
 * sending it). Their RTT and packet time are not told to us, so they are taken to be like mine.
 * Capture and playout buffering inside the two computers come on top and are not counted.
 */
function estimateOneWayMs(myRttMs, jitterMs) {
  if (myRttMs == null && jitterMs == null) return null;
  return (myRttMs ?? 0) + (jitterMs ?? 0) + (state.sendPtimeMs ?? 0);
}

// ---------------------------------------------------------------------------------------------
// Rendering.

function render() {
  renderHeader();
  updateControls();
}

function renderHeader() {
  $('session-id').textContent = state.sessionId ?? '—';
  $('self-name').textContent = state.self?.name ?? '—';
  const [overall, overallText] = overallState();
  setStateText($('conn-state'), overall, overallText);
  setStateText($('sig-state'), state.signaling, state.signaling);
  for (const [role, id] of [['publisher', 'pub-state'], ['subscriber', 'sub-state']]) {
    const { connection } = state[role];
    let text = connection === 'none' ? '—' : connection;
    if (role === 'subscriber' && connection === 'none' && state.joined) text = 'nobody else yet';
    setStateText($(id), connection, text);
  }
  $('sig-rtt').textContent = formatMs(state.rtt.signalingMs);
  $('server-rtt').textContent = formatMs(state.rtt.serverMs);
  $('codec').textContent = codecText();
}

/** One state for the header: [data-state, text]. */
function overallState() {
  if (state.phase === 'connecting') return ['connecting', 'Connecting…'];
  if (state.phase === 'error') return ['failed', 'Not connected'];
  if (state.phase === 'left') return ['idle', 'Left'];
  if (!state.joined) return ['idle', 'Not connected'];
  const links = ['publisher', 'subscriber'].map((r) => state[r].connection).filter((c) => c !== 'none');
  if (links.includes('failed')) return ['failed', 'Audio connection failed'];
  if (links.includes('disconnected')) return ['connecting', 'Connection unstable'];
  if (links.length && links.every((c) => c === 'connected')) return ['connected', 'Connected'];
  return ['connecting', 'Connecting audio…'];
}

function codecText() {
  const c = state.codec;
  if (!c || !state.publishing) return state.joined && !state.publishing ? 'listening only' : '—';
  const name = c.mime_type?.split('/')[1] ?? c.mime_type;
  const channels = c.channels >= 2 ? 'stereo' : 'mono';
  const ptime = state.sendPtimeMs == null ? '' : ` · ${formatPtime(state.sendPtimeMs)} packets`;
  return `${name} ${channels} · ${Math.round(c.max_average_bitrate / 1000)} kb/s${ptime}`;
}

/** Opus frames are 2.5, 5, 10, 20, 40 or 60 ms; show the measured figure to 0.1 ms. */
function formatPtime(ms) {
  return `${ms.toFixed(1).replace(/\.0$/, '')} ms`;
}

function setStateText(el, stateName, text) {
  el.dataset.state = stateName;
  el.textContent = text;
}

/** Whole milliseconds, but one decimal below 10 ms: on a LAN or loopback that is the figure. */
function formatMs(ms) {
  if (ms == null) return '—';
  if (ms < 1) return '<1 ms'; // ICE reports whole milliseconds: 0 means "under one"
  return ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`;
}

function updateControls() {
  const connected = Boolean(session);
  renderRecording(state);
  $('join').disabled = connected;
  $('token').disabled = connected;
  // Once in, the token is noise: the form comes back after leaving or an error.
  $('join-form').hidden = state.joined;
  $('leave').disabled = !connected;
  const mute = $('mute');
  mute.disabled = !state.joined || !state.publishing;
  mute.textContent = state.muted ? 'Unmute' : 'Mute';
  mute.setAttribute('aria-pressed', String(state.muted));
  mute.classList.toggle('active', state.muted);
  const canChat = state.chatOpen && state.grants?.chat !== false;
  $('chat-input').disabled = !canChat;
  $('chat-send').disabled = !canChat;
  $('chat-input').placeholder = state.grants?.chat === false ? 'Chat is not allowed for you' : 'Say something…';
}

function participantLi(id) {
  return [...$('participants').children].find((li) => li.dataset.participantId === id) ?? null;
}

function renderParticipant(p) {
  let li = participantLi(p.id);
  if (!li) {
    li = document.createElement('li');
    li.className = 'participant';
    li.dataset.participantId = p.id;
    const head = document.createElement('div');
    head.className = 'p-head';
    head.append(textSpan('p-name', ''), textSpan('p-tag', ''));
    const meter = document.createElement('div');
    meter.className = 'level';
    meter.setAttribute('role', 'meter');
    meter.setAttribute('aria-label', 'Audio level');
    meter.setAttribute('aria-valuemin', '0');
    meter.setAttribute('aria-valuemax', '1');
    meter.dataset.level = '0';
    const fill = document.createElement('div');
    fill.className = 'level-fill';
    meter.append(fill);
    li.append(head, meter, textSpan('p-delay', '—'));
    // Me first, then others in arrival order.
    if (p.isSelf) $('participants').prepend(li);
    else $('participants').append(li);
  }
  li.classList.toggle('self', p.isSelf);
  li.classList.toggle('muted', isMuted(p));
  const name = li.querySelector('.p-name');
  name.textContent = p.name || p.user || p.id;
  name.title = name.textContent; // long names are cut with an ellipsis
  const tags = [];
  if (p.isSelf) tags.push('you');
  if (isMuted(p)) tags.push('muted');
  else if (!p.isSelf && p.tracks.length === 0) tags.push('not playing');
  li.querySelector('.p-tag').textContent = tags.join(' · ');
  renderParticipantStats(p);
}

function renderParticipantStats(p) {
  const li = participantLi(p.id);
  if (!li) return;
  // The meter shows the browser's own audioLevel (getStats), on a -60..0 dBFS scale.
  const meter = li.querySelector('.level');
  const value = levelToMeter(p.level);
  meter.dataset.level = value.toFixed(2);
  meter.setAttribute('aria-valuenow', value.toFixed(2));
  meter.title = p.level > 0 ? `level ${(20 * Math.log10(p.level)).toFixed(0)} dBFS` : 'silent';
  meter.firstElementChild.style.clipPath = `inset(0 ${(100 * (1 - value)).toFixed(1)}% 0 0)`;
  const delay = li.querySelector('.p-delay');
  if (p.isSelf) {
    delay.textContent = `RTT to server ${formatMs(p.rttMs)}`;
    delay.title = 'Round trip of your audio to the server and back.';
  } else {
    delay.textContent = p.delayMs == null ? '≈ — from them' : `≈ ${formatMs(p.delayMs)} from them`;
    const parts = [
      `network ≈ ${formatMs(state.rtt.serverMs)} (their RTT/2 + yours/2; theirs taken as yours)`,
      `your jitter buffer ${formatMs(p.jitterMs)}`,
      `packet time ${state.sendPtimeMs == null ? '—' : formatPtime(state.sendPtimeMs)}`,
    ];
    delay.title = `Estimated one-way delay from them to you:\n${parts.join('\n')}`;
  }
}

/** audioLevel is linear 0..1; a -60..0 dBFS scale moves like the ear hears. */
function levelToMeter(level) {
  if (!level || level <= 0) return 0;
  const db = 20 * Math.log10(level);
  return Math.min(1, Math.max(0, (db + 60) / 60));
}

function showStatus(text, kind = 'info') {
  const area = $('status');
  const line = document.createElement('div');
  line.className = `status-line ${kind}`;
  line.textContent = text;
  area.append(line);
  while (area.children.length > STATUS_LINES) area.firstElementChild.remove();
  if (kind === 'error') console.warn('veza:', text);
}

/** The one error that explains why you are not (or no longer) in the session. */
function showError(title, detail) {
  $('error-title').textContent = title;
  $('error-detail').textContent = detail ?? '';
  $('error').hidden = false;
}

function clearError() {
  $('error').hidden = true;
  $('error-title').textContent = '';
  $('error-detail').textContent = '';
}

function setSignaling(value) {
  state.signaling = value;
  renderHeader();
}

// ---------------------------------------------------------------------------------------------
// Wiring.

function init() {
  $('join-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    join($('token').value);
  });
  $('leave').addEventListener('click', () => leave());
  $('mute').addEventListener('click', () => setMuted(!state.muted));
  $('record').addEventListener('click', () => {
    if (session) send(session, { type: recording.active ? 'stop_recording' : 'start_recording' });
  });
  $('export-stems').addEventListener('click', () => {
    if (session) exportStems({ sessionId: state.sessionId, token: session.token }, render);
  });
  $('chat-form').addEventListener('submit', (ev) => {
    // The form's submit covers both the Send button and Enter in the input.
    ev.preventDefault();
    const input = $('chat-input');
    if (sendChat(input.value)) input.value = '';
  });
  // Leaving explicitly frees our seat at once instead of after the server's timeout.
  window.addEventListener('pagehide', () => leave());
  render();

  const token = new URLSearchParams(location.search).get('token');
  if (token) {
    $('token').value = token;
    join(token);
  }
}

init();
