// Live video. The teacher publishes camera, microphone and screen from the studio; a student invited on
// stage publishes from the room page; everyone plays what the others publish. Signalling goes over the
// room socket (docs/protocol.md, "Media"). Names are set with textContent only.

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

function show(element, text, state) {
  if (!element) return;
  element.textContent = text;
  element.dataset.state = state;
}

// ------------------------------------------------------------------------------------ publishing

/**
 * This user's camera, microphone and screen, published while the room is live and the user may
 * publish: the teacher (the `publish` grant) in the studio, a student while staff keep them on stage.
 * `ids` names the page's elements: preview (video), state (text), camera, mic and screen (buttons).
 */
class Broadcaster {
  constructor(client, ids) {
    this.client = client;
    this.ids = ids;
    this.local = null; // camera + microphone MediaStream
    this.screen = null; // screen share MediaStream
    this.pcs = {main: null, screen: null};
    this.busy = {main: false, screen: false};
    this.starting = false;
  }

  state(text, state) {
    show($(this.ids.state), text, state);
  }

  mayPublish() {
    const c = this.client;
    return Boolean(c.me && (c.me.grants.publish || c.stage.includes(c.me.user_id)));
  }

  /** Start the camera and show it; publishing follows in sync(). */
  async preview() {
    if (this.local || this.starting || !this.mayPublish()) return;
    this.starting = true;
    try {
      this.local = await navigator.mediaDevices.getUserMedia({video: {width: 1280, height: 720}, audio: true});
    } catch (err) {
      this.state(`Camera unavailable: ${err.message}`, 'error');
      return;
    } finally {
      this.starting = false;
    }
    $(this.ids.preview).srcObject = this.local;
    for (const id of [this.ids.camera, this.ids.mic, this.ids.screen]) if ($(id)) $(id).disabled = false;
    this.state('Preview: not live', 'preview');
    this.sync();
  }

  /** Publish what should be published now; called on every room, stage or connection change. */
  sync() {
    const c = this.client;
    if (c.room && c.room.status === 'ended') return this.release('Lesson ended', 'ended');
    if (!this.mayPublish()) return this.local ? this.release('', 'idle') : undefined;
    if (c.conn.state === 'live') this.preview();
    const live = c.conn.state === 'live' && c.room && c.room.status === 'live';
    const wanted = {main: Boolean(live && this.local), screen: Boolean(live && this.screen)};
    for (const stream of ['main', 'screen']) {
      if (wanted[stream] && !this.pcs[stream]) this.publish(stream);
      if (!wanted[stream] && this.pcs[stream] && c.conn.state === 'live') this.unpublish(stream);
    }
    return undefined;
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
      if (this.pcs[stream] !== pc) {
        pc.close();
        return;
      }
      if (!answer.ok) throw new Error(answer.error.message);
      await pc.setRemoteDescription({type: 'answer', sdp: answer.sdp});
    } catch (err) {
      this.state(`Could not go live: ${err.message}`, 'error');
      if (this.pcs[stream] === pc) this.pcs[stream] = null;
      pc.close();
      setTimeout(() => this.sync(), RETRY_MS);
    } finally {
      this.busy[stream] = false;
    }
  }

  /** Drop the connection; sync() publishes again (after a lost socket, the server closed it). */
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
    if (stream === 'main') this.state('Preview: not live', 'preview');
  }

  /** Stop publishing and release camera and screen. */
  release(text, state) {
    for (const stream of ['main', 'screen']) {
      if (this.pcs[stream]) this.pcs[stream].close();
      this.pcs[stream] = null;
    }
    for (const media of [this.local, this.screen]) if (media) for (const t of media.getTracks()) t.stop();
    this.local = null;
    this.screen = null;
    if ($(this.ids.preview)) $(this.ids.preview).srcObject = null;
    this.state(text, state);
  }

  showState(state) {
    const labels = {connecting: 'Going live…', connected: 'Live', disconnected: 'Reconnecting…', failed: 'Reconnecting…'};
    if (labels[state]) this.state(labels[state], state === 'connected' ? 'live' : 'connecting');
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
    const button = $(this.ids.screen);
    if (this.screen) {
      for (const t of this.screen.getTracks()) t.stop();
      this.screen = null;
      button.textContent = 'Share screen';
      return this.sync();
    }
    try {
      this.screen = await navigator.mediaDevices.getDisplayMedia({video: true, audio: false});
    } catch (err) {
      this.state(`Screen share refused: ${err.message}`, 'error');
      return undefined;
    }
    button.textContent = 'Stop sharing';
    this.screen.getVideoTracks()[0].addEventListener('ended', () => {
      this.screen = null;
      button.textContent = 'Share screen';
      this.sync();
    });
    return this.sync();
  }
}

// -------------------------------------------------------------------------------------- watching

/**
 * Plays what others publish. On the room page the lead (the room's teacher) fills the main video and
 * any screen share the second; on both pages everyone else (students on stage, or the teacher seen from
 * another staff studio) gets a tile.
 */
class Player {
  constructor(client, {main, screen, tiles, state}) {
    this.client = client;
    this.el = {main: $(main), screen: $(screen), tiles: $(tiles), state: $(state)};
    this.pc = null;
    this.tracks = {}; // mid -> {user_id, label, kind}
    this.byMid = {}; // mid -> MediaStreamTrack
    this.streams = new Map(); // 'main' | 'screen' | user id -> MediaStream
    this.watching = false;
  }

  state(text, state) {
    show(this.el.state, text, state);
  }

  /** (Re)start watching: a fresh peer connection; the server then offers the room's tracks. */
  async watch() {
    if (this.pc) this.pc.close();
    this.pc = null;
    this.byMid = {};
    this.tracks = {};
    this.place();
    this.state('Waiting for the teacher…', 'waiting');
    const answer = await this.client.request('media:watch', {});
    this.watching = answer.ok;
    if (!answer.ok) this.state(answer.error.message, 'error');
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
      this.state(`Video unavailable: ${err.message}`, 'error');
      setTimeout(() => this.watch(), RETRY_MS);
    }
  }

  newPeer() {
    const pc = new RTCPeerConnection(iceConfig(this.client.iceServers));
    pc.addEventListener('track', ({track, transceiver}) => {
      this.byMid[transceiver.mid] = track;
      this.place();
    });
    pc.addEventListener('connectionstatechange', () => {
      if (this.pc !== pc) return;
      const state = pc.connectionState;
      if (state === 'connected') this.state('Live', 'playing');
      else if (state === 'connecting') this.state('Connecting video…', 'connecting');
      else if (state === 'failed') {
        this.state('Video connection lost; reconnecting…', 'reconnecting');
        setTimeout(() => this.pc === pc && this.watch(), RETRY_MS);
      }
    });
    return pc;
  }

  /** Which stream each received track belongs in. */
  layout() {
    const want = new Map();
    const add = (key, track) => {
      if (!want.has(key)) want.set(key, new Set());
      want.get(key).add(track);
    };
    const users = new Set(Object.values(this.tracks).map((t) => t.user_id));
    const room = this.client.room;
    const lead = this.el.main && (users.has(room && room.teacher_id) ? room.teacher_id : [...users].sort()[0]);
    for (const [mid, info] of Object.entries(this.tracks)) {
      const track = this.byMid[mid];
      if (!track) continue;
      if (info.label === 'screen' && this.el.screen) add('screen', track);
      else if (info.user_id === lead) add('main', track);
      else add(info.label === 'screen' ? `${info.user_id}:screen` : info.user_id, track);
    }
    return want;
  }

  place() {
    const want = this.layout();
    for (const key of [...this.streams.keys()]) if (!want.has(key)) this.detach(key);
    for (const [key, tracks] of want) {
      let stream = this.streams.get(key);
      if (!stream) {
        stream = new MediaStream();
        this.streams.set(key, stream);
        this.attach(key, stream);
      }
      for (const t of stream.getTracks()) if (!tracks.has(t)) stream.removeTrack(t);
      for (const t of tracks) if (!stream.getTracks().includes(t)) stream.addTrack(t);
    }
    if (this.el.main && !want.has('main') && this.watching) this.state('Waiting for the teacher…', 'waiting');
  }

  attach(key, stream) {
    let video = key === 'main' || key === 'screen' ? this.el[key] : null;
    if (!video) {
      const [user] = key.split(':');
      const member = this.client.members.get(user);
      const tile = document.createElement('figure');
      tile.className = 'tile';
      tile.dataset.key = key;
      video = document.createElement('video');
      Object.assign(video, {autoplay: true, playsInline: true});
      Object.assign(video.dataset, {testid: 'stage-video', userId: user});
      const caption = document.createElement('figcaption');
      caption.textContent = member ? member.name : user;
      tile.append(video, caption);
      this.el.tiles.append(tile);
    }
    video.hidden = false;
    video.srcObject = stream;
    play(video);
  }

  detach(key) {
    this.streams.delete(key);
    if (key === 'main' || key === 'screen') {
      const video = this.el[key];
      if (video) {
        video.srcObject = null;
        if (key === 'screen') video.hidden = true;
      }
      return;
    }
    for (const tile of this.el.tiles.querySelectorAll('figure.tile')) if (tile.dataset.key === key) tile.remove();
  }
}

/** Start playback; where the browser wants a click before sound, play muted and offer to unmute. */
function play(video) {
  video.play().catch(() => {
    video.muted = true;
    video.play().catch(() => {});
    const unmute = $('unmute');
    if (unmute) unmute.hidden = false;
  });
}

// ---------------------------------------------------------------------------------------- mount

export function mountMedia(client, studio) {
  client.iceServers = [];
  const ids = studio
    ? {preview: 'preview', state: 'media-state', camera: 'toggle-camera', mic: 'toggle-mic', screen: 'share-screen'}
    : {preview: 'stage-preview', state: 'stage-state', camera: 'stage-camera', mic: 'stage-mic', screen: 'stage-screen'};
  const broadcaster = new Broadcaster(client, ids);
  const player = studio
    ? new Player(client, {tiles: 'stage-tiles'})
    : new Player(client, {main: 'lesson', screen: 'screen', tiles: 'stage-tiles', state: 'media-state'});
  window.lessonMedia = {broadcaster, player}; // for tests and the browser console

  $(ids.camera).addEventListener('click', (e) => broadcaster.toggle('video', e.currentTarget));
  $(ids.mic).addEventListener('click', (e) => broadcaster.toggle('audio', e.currentTarget));
  $(ids.screen).addEventListener('click', () => broadcaster.shareScreen());
  if (!studio) {
    $('leave-stage').addEventListener('click', () => client.request('stage:remove', {user_id: client.me.user_id}));
    $('unmute').addEventListener('click', () => {
      for (const v of document.querySelectorAll('#video video')) v.muted = false;
      $('unmute').hidden = true;
    });
  }
  const renderStage = () => {
    if (!studio) $('stage-panel').hidden = !(client.me && client.stage.includes(client.me.user_id));
  };
  client.addEventListener('media-offer', ({detail}) => player.offer(detail));
  client.addEventListener('joined', () => player.watch());
  client.addEventListener('media-restart', () => {
    // The instance hosting the room's media changed: watch and publish again there.
    for (const stream of ['main', 'screen']) if (broadcaster.pcs[stream]) broadcaster.republish(stream);
    player.watch();
  });
  client.addEventListener('change', ({detail}) => {
    if (detail.what === 'count' && studio) $('viewer-count').textContent = String(Math.max(0, client.headCount - 1));
    if (detail.what === 'members') player.place();
    if (['conn', 'room', 'reset', 'stage'].includes(detail.what)) {
      if (detail.what === 'conn' && client.conn.state !== 'live') {
        // The server closes what this socket published when it goes; publish again once back.
        for (const stream of ['main', 'screen']) if (broadcaster.pcs[stream]) broadcaster.republish(stream);
      }
      renderStage();
      broadcaster.sync();
      player.place();
    }
  });
}
