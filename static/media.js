// Live video: the studio publishes camera, microphone and screen; the room page plays the lesson.
// Signalling goes over the room socket (docs/protocol.md, "Media"). No user text is rendered here.

const $ = (id) => document.getElementById(id);
const GATHER_MS = 2000; // offers and answers carry their candidates; gathering is quick without STUN
const RETRY_MS = 1500;

/** Resolve once ICE gathering is complete (or after GATHER_MS with what was gathered). */
function gathered(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== 'complete') return;
      pc.removeEventListener('icegatheringstatechange', done);
      resolve();
    };
    pc.addEventListener('icegatheringstatechange', done);
    setTimeout(resolve, GATHER_MS);
  });
}

const iceConfig = (servers) => ({iceServers: servers || [], bundlePolicy: 'max-bundle'});

function setState(text, state) {
  $('media-state').textContent = text;
  $('media-state').dataset.state = state;
}

// ---------------------------------------------------------------------------------------- studio

class Studio {
  constructor(client) {
    this.client = client;
    this.local = null; // camera + microphone MediaStream
    this.screen = null; // screen share MediaStream
    this.pcs = {main: null, screen: null};
    this.wanted = {main: false, screen: false};
    this.busy = {main: false, screen: false};
  }

  async preview() {
    if (this.local) return;
    try {
      this.local = await navigator.mediaDevices.getUserMedia({video: {width: 1280, height: 720}, audio: true});
    } catch (err) {
      setState(`Camera unavailable: ${err.message}`, 'error');
      return;
    }
    $('preview').srcObject = this.local;
    $('toggle-camera').disabled = false;
    $('toggle-mic').disabled = false;
    $('share-screen').disabled = false;
    setState('Preview: not live', 'preview');
    this.sync();
  }

  /** Publish while the room is live; called on every room or connection change. */
  sync() {
    const c = this.client;
    const canPublish = c.me && c.me.grants.publish && c.conn.state === 'live';
    const live = c.room && c.room.status === 'live';
    this.wanted.main = Boolean(canPublish && live && this.local);
    this.wanted.screen = Boolean(canPublish && live && this.screen);
    for (const stream of ['main', 'screen']) {
      if (this.wanted[stream] && !this.pcs[stream]) this.publish(stream);
      if (!this.wanted[stream] && this.pcs[stream] && c.conn.state === 'live') this.unpublish(stream);
    }
    if (c.room && c.room.status === 'ended') this.stopAll();
  }

  async publish(stream) {
    if (this.busy[stream]) return;
    this.busy[stream] = true;
    const source = stream === 'main' ? this.local : this.screen;
    const pc = new RTCPeerConnection(iceConfig(this.client.iceServers));
    this.pcs[stream] = pc;
    for (const track of source.getTracks()) pc.addTransceiver(track, {direction: 'sendonly', streams: [source]});
    pc.addEventListener('connectionstatechange', () => {
      if (this.pcs[stream] !== pc) return;
      if (stream === 'main') this.showState(pc.connectionState);
      if (pc.connectionState === 'failed') this.republish(stream); // e.g. the media instance went away
    });
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc);
      const answer = await this.client.request('media:publish', {sdp: pc.localDescription.sdp, stream});
      if (this.pcs[stream] !== pc) return pc.close();
      if (!answer.ok) throw new Error(answer.error.message);
      await pc.setRemoteDescription({type: 'answer', sdp: answer.sdp});
    } catch (err) {
      setState(`Could not go live: ${err.message}`, 'error');
      if (this.pcs[stream] === pc) this.pcs[stream] = null;
      pc.close();
      setTimeout(() => this.sync(), RETRY_MS);
    } finally {
      this.busy[stream] = false;
    }
    return undefined;
  }

  republish(stream) {
    const pc = this.pcs[stream];
    this.pcs[stream] = null;
    if (pc) pc.close();
    setTimeout(() => this.sync(), 300);
  }

  unpublish(stream) {
    const pc = this.pcs[stream];
    this.pcs[stream] = null;
    if (pc) pc.close();
    this.client.request('media:unpublish', {stream});
    if (stream === 'main') setState('Preview: not live', 'preview');
  }

  stopAll() {
    for (const stream of ['main', 'screen']) {
      if (this.pcs[stream]) this.pcs[stream].close();
      this.pcs[stream] = null;
    }
    setState('Lesson ended', 'ended');
  }

  showState(state) {
    const labels = {connecting: 'Going live…', connected: 'Live', disconnected: 'Reconnecting…', failed: 'Reconnecting…'};
    if (labels[state]) setState(labels[state], state === 'connected' ? 'live' : 'connecting');
  }

  toggle(kind, button) {
    if (!this.local) return;
    const tracks = kind === 'video' ? this.local.getVideoTracks() : this.local.getAudioTracks();
    const on = !tracks.every((t) => t.enabled);
    for (const t of tracks) t.enabled = on;
    button.setAttribute('aria-pressed', String(!on));
    button.textContent = kind === 'video' ? (on ? 'Camera off' : 'Camera on') : (on ? 'Mute' : 'Unmute');
  }

  async shareScreen() {
    if (this.screen) {
      for (const t of this.screen.getTracks()) t.stop();
      this.screen = null;
      $('share-screen').textContent = 'Share screen';
      return this.sync();
    }
    try {
      this.screen = await navigator.mediaDevices.getDisplayMedia({video: true, audio: false});
    } catch (err) {
      setState(`Screen share refused: ${err.message}`, 'error');
      return undefined;
    }
    $('share-screen').textContent = 'Stop sharing';
    this.screen.getVideoTracks()[0].addEventListener('ended', () => {
      this.screen = null;
      $('share-screen').textContent = 'Share screen';
      this.sync();
    });
    return this.sync();
  }
}

// ------------------------------------------------------------------------------------------ room

class Player {
  constructor(client) {
    this.client = client;
    this.pc = null;
    this.tracks = {}; // mid -> {label, user_id, kind}
    this.streams = {main: new MediaStream(), screen: new MediaStream()};
    this.watching = false;
  }

  /** (Re)start watching: a fresh peer connection, the server then offers the room's tracks. */
  async watch() {
    if (this.pc) this.pc.close();
    this.pc = null;
    this.streams = {main: new MediaStream(), screen: new MediaStream()};
    $('lesson').srcObject = this.streams.main;
    $('screen').srcObject = this.streams.screen;
    $('screen').hidden = true;
    setState('Waiting for the teacher…', 'waiting');
    const answer = await this.client.request('media:watch', {});
    this.watching = answer.ok;
    if (!answer.ok) setState(answer.error.message, 'error');
  }

  async offer({sdp, tracks}) {
    this.tracks = tracks || {};
    this.place();
    if (!sdp) return;
    if (!this.pc) this.pc = this.newPeer();
    const pc = this.pc;
    try {
      await pc.setRemoteDescription({type: 'offer', sdp});
      await pc.setLocalDescription(await pc.createAnswer());
      await gathered(pc);
      const answer = await this.client.request('media:answer', {sdp: pc.localDescription.sdp});
      if (!answer.ok) throw new Error(answer.error.message);
    } catch (err) {
      setState(`Video unavailable: ${err.message}`, 'error');
      setTimeout(() => this.watch(), RETRY_MS);
    }
  }

  newPeer() {
    const pc = new RTCPeerConnection(iceConfig(this.client.iceServers));
    pc.addEventListener('track', ({track, transceiver}) => {
      this.byMid = this.byMid || {};
      this.byMid[transceiver.mid] = track;
      this.place();
    });
    pc.addEventListener('connectionstatechange', () => {
      if (this.pc !== pc) return;
      const state = pc.connectionState;
      if (state === 'connected') setState('Live', 'playing');
      else if (state === 'connecting') setState('Connecting video…', 'connecting');
      else if (state === 'failed') {
        setState('Video connection lost; reconnecting…', 'reconnecting');
        setTimeout(() => this.pc === pc && this.watch(), RETRY_MS);
      }
    });
    return pc;
  }

  /** Put each received track where its label says: camera and microphone together, the screen apart. */
  place() {
    const byMid = this.byMid || {};
    const want = {main: new Set(), screen: new Set()};
    for (const [mid, info] of Object.entries(this.tracks)) {
      const track = byMid[mid];
      if (track) want[info.label === 'screen' ? 'screen' : 'main'].add(track);
    }
    for (const name of ['main', 'screen']) {
      const stream = this.streams[name];
      for (const t of stream.getTracks()) if (!want[name].has(t)) stream.removeTrack(t);
      for (const t of want[name]) if (!stream.getTracks().includes(t)) stream.addTrack(t);
    }
    $('screen').hidden = this.streams.screen.getTracks().length === 0;
    const hasVideo = this.streams.main.getVideoTracks().length > 0;
    if (!hasVideo && this.watching) setState('Waiting for the teacher…', 'waiting');
    play($('lesson'));
    if (!$('screen').hidden) play($('screen'));
  }
}

/** Start playback; where the browser wants a click before sound, play muted and offer to unmute. */
function play(video) {
  video.play().catch(() => {
    video.muted = true;
    video.play().catch(() => {});
    $('unmute').hidden = false;
  });
}

// ---------------------------------------------------------------------------------------- mount

export function mountMedia(client, studio) {
  client.iceServers = [];
  if (studio) {
    const s = new Studio(client);
    window.studioMedia = s; // for tests and the browser console
    $('toggle-camera').addEventListener('click', (e) => s.toggle('video', e.currentTarget));
    $('toggle-mic').addEventListener('click', (e) => s.toggle('audio', e.currentTarget));
    $('share-screen').addEventListener('click', () => s.shareScreen());
    client.addEventListener('change', ({detail}) => {
      if (detail.what === 'count') $('viewer-count').textContent = String(Math.max(0, client.headCount - 1));
      if (['conn', 'room', 'reset'].includes(detail.what)) {
        if (detail.what === 'conn' && client.conn.state !== 'live') {
          // The server closes what this socket published when it goes; publish again once back.
          for (const stream of ['main', 'screen']) if (s.pcs[stream]) s.republish(stream);
        }
        if (client.conn.state === 'live') s.preview();
        s.sync();
      }
    });
    return s;
  }
  const p = new Player(client);
  window.lessonPlayer = p;
  client.addEventListener('media-offer', ({detail}) => p.offer(detail));
  client.addEventListener('joined', () => p.watch());
  $('unmute').addEventListener('click', () => {
    for (const v of [$('lesson'), $('screen')]) v.muted = false;
    $('unmute').hidden = true;
  });
  return p;
}
