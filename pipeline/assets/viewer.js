// The interactive pose viewer: the clip with its 2D skeleton on the left, one orbitable three.js view per lifter
// checkpoint (or all overlaid) on the right, both driven by one frame index. pipeline/viewer.py inlines this file,
// the three.js bundle (global THREE) and the data (JSON, <script id="viewer-data">) into one HTML page that works
// from file:// without a server or network. Tests read the read-only `window.viewerState`.
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("viewer-data").textContent);
  const T = DATA.frames, P = DATA.people, K = DATA.checkpoints.length;
  const SK = DATA.skeleton, J = SK.parents.length;
  const COL = DATA.colors;
  const OVERLAY_COLORS = ["#ffffff", "#f0e442", "#cc79a7", "#56e0c0", "#b08cff", "#ffb000"];
  const $ = (id) => document.getElementById(id);

  // ---- data -------------------------------------------------------------------------------------------------
  function decode(list, scale) {  // JSON integers in 1/scale units (null = missing) -> Float32Array (NaN = missing)
    const out = new Float32Array(list.length);
    for (let i = 0; i < list.length; i++) out[i] = list[i] === null ? NaN : list[i] / scale;
    return out;
  }
  const bits = (s) => Uint8Array.from(s, (c) => (c === "1" ? 1 : 0));
  const kp2d = DATA.keypoints2d.map((l) => decode(l, DATA.scale2d));  // [P] T*J*2 pixels
  const pose = DATA.poses3d.map((perK) => perK.map((l) => decode(l, DATA.scale3d)));  // [K][P] T*J*3 metres
  const traj = DATA.trajectory ? DATA.trajectory.map((perK) => perK.map((l) => decode(l, DATA.scale3d))) : null;
  const valid = DATA.valid.map(bits);  // [P] T
  const confident = DATA.confident ? DATA.confident.map(bits) : null;  // [P] T*J, or null: all confident
  const side = (j) => (SK.left.includes(j) ? "left" : SK.right.includes(j) ? "right" : "center");
  const BONES = [];
  SK.parents.forEach((p, j) => { if (p >= 0) BONES.push([p, j]); });

  // Per-frame disagreement of checkpoint k with the first, on the followed person: mean per-joint distance of the
  // root-relative poses (rotation and ground shift drop out, so this is the runner's camera-space figure), in mm.
  const disagreement = [null];
  const clipMean = [null];
  // How far apart the flip test's two passes put the followed person's joints, per checkpoint and frame (mm).
  const flipSpread = DATA.flipSpread ? DATA.flipSpread.map((perPerson) => perPerson[0]) : null;
  for (let k = 1; k < K; k++) {
    const d = new Float32Array(T);
    let sum = 0, n = 0;
    const a = pose[0][0], b = pose[k][0];
    for (let t = 0; t < T; t++) {
      let s = 0, m = 0;
      const o = t * J * 3;
      for (let j = 0; j < J; j++) {
        const dx = (a[o + 3 * j] - a[o]) - (b[o + 3 * j] - b[o]);
        const dy = (a[o + 3 * j + 1] - a[o + 1]) - (b[o + 3 * j + 1] - b[o + 1]);
        const dz = (a[o + 3 * j + 2] - a[o + 2]) - (b[o + 3 * j + 2] - b[o + 2]);
        const v = Math.sqrt(dx * dx + dy * dy + dz * dz);
        if (Number.isFinite(v)) { s += v; m++; }
      }
      d[t] = m ? (s / m) * 1000 : NaN;
      if (m) { sum += d[t]; n++; }
    }
    disagreement.push(d);
    clipMean.push(n ? sum / n : NaN);
  }

  // ---- state --------------------------------------------------------------------------------------------------
  const state = { frame: 0, shownVideoFrame: null, mode: "split", playing: false, videoError: null, webglError: null,
    ready: false, renders3d: 0, follow: Boolean(DATA.trajectory) };
  const video = $("video"), overlay = $("overlay"), slider = $("slider");
  const canvas3d = $("canvas3d"), view3d = $("view3d");
  slider.max = String(T - 1);
  $("title").textContent = DATA.title;
  document.title = DATA.title;
  if (K < 2) $("mode").hidden = true;

  // ---- 3D -----------------------------------------------------------------------------------------------------
  const color = (hex) => new THREE.Color(hex);
  let renderer = null, scene, camera, controls, limits;
  const skeletons = [];  // [k][p] -> {group, bones, shadow, joints, path, trail, travelled}

  function computeLimits() {  // like pipeline.render.WorldLimits: a square on the ground around every pose
    const lo = [Infinity, Infinity, Infinity], hi = [-Infinity, -Infinity, -Infinity];
    const scan = (arr) => {
      for (let i = 0; i < arr.length; i += 3) {
        if (!(Number.isFinite(arr[i]) && Number.isFinite(arr[i + 1]) && Number.isFinite(arr[i + 2]))) continue;
        for (let c = 0; c < 3; c++) { lo[c] = Math.min(lo[c], arr[i + c]); hi[c] = Math.max(hi[c], arr[i + c]); }
      }
    };
    pose.forEach((perK) => perK.forEach(scan));
    if (traj) traj.forEach((perK) => perK.forEach(scan));
    if (!Number.isFinite(lo[0])) { lo.splice(0, 3, -1, -1, 0); hi.splice(0, 3, 1, 1, 2); }
    const cx = (lo[0] + hi[0]) / 2, cy = (lo[1] + hi[1]) / 2, m = DATA.view.margin;
    const half = Math.max(Math.max(hi[0] - lo[0], hi[1] - lo[1]) / 2, 0.5) + m;
    const zLow = Math.min(0, lo[2]) - m / 3, zHigh = Math.max(hi[2], zLow + 0.5) + m;
    return { lo: [cx - half, cy - half, zLow], hi: [cx + half, cy + half, zHigh] };
  }

  function groundAndGrid() {
    const g = new THREE.Group();
    const [x0, y0] = limits.lo, [x1, y1] = limits.hi;
    const plane = new THREE.Mesh(new THREE.PlaneGeometry(x1 - x0, y1 - y0),
      new THREE.MeshBasicMaterial({ color: color(COL.ground), side: THREE.DoubleSide }));
    plane.position.set((x0 + x1) / 2, (y0 + y1) / 2, -0.002);
    g.add(plane);
    const step = DATA.view.gridSpacing, pts = [];
    for (let x = Math.ceil(x0 / step) * step; x <= x1 + 1e-9; x += step) pts.push(x, y0, 0, x, y1, 0);
    for (let y = Math.ceil(y0 / step) * step; y <= y1 + 1e-9; y += step) pts.push(x0, y, 0, x1, y, 0);
    const geom = new THREE.BufferGeometry();
    geom.setAttribute("position", new THREE.Float32BufferAttribute(pts, 3));
    g.add(new THREE.LineSegments(geom, new THREE.LineBasicMaterial({ color: color(COL.grid) })));
    return g;
  }

  function fatLines(count, width, vertexColors, hex) {
    const geom = new THREE.LineSegmentsGeometry();
    geom.setPositions(new Float32Array(count * 6));
    if (vertexColors) geom.setColors(new Float32Array(count * 6));
    const mat = new THREE.LineMaterial({ linewidth: width, vertexColors, color: vertexColors ? 0xffffff : color(hex) });
    const lines = new THREE.LineSegments2(geom, mat);
    lines.frustumCulled = false;
    return lines;
  }

  function makeSkeleton(k, p) {
    const group = new THREE.Group();
    const s = {
      group,
      shadow: fatLines(BONES.length, DATA.view.lineWidth, false, COL.shadow),
      bones: fatLines(BONES.length, DATA.view.lineWidth, true),
      joints: new THREE.InstancedMesh(new THREE.SphereGeometry(DATA.view.jointRadius, 12, 8),
        new THREE.MeshBasicMaterial(), J),
    };
    s.joints.frustumCulled = false;
    group.add(s.shadow, s.bones, s.joints);
    if (traj) {  // the pelvis path: all of it faint, the part travelled up to this frame bright (as the video's trail)
      const arr = traj[k][p], pts = [];
      s.travelled = new Int32Array(T);  // points of the path up to and including frame t
      for (let t = 0; t < T; t++) {
        const q = arr.subarray(3 * t, 3 * t + 3);
        if (q.every(Number.isFinite)) pts.push(q[0], q[1], q[2]);
        s.travelled[t] = pts.length / 3;
      }
      const geom = new THREE.BufferGeometry();
      geom.setAttribute("position", new THREE.Float32BufferAttribute(pts, 3));
      s.path = new THREE.Line(geom, new THREE.LineBasicMaterial({ color: color(COL.trajectory), transparent: true,
        opacity: 0.3 }));
      s.trail = fatLines(Math.max(pts.length / 3 - 1, 1), DATA.view.lineWidth / 2, false, COL.trajectory);
      const seg = s.trail.geometry.attributes.instanceStart.data.array;
      for (let i = 0; i + 1 < pts.length / 3; i++) seg.set(pts.slice(3 * i, 3 * i + 6), 6 * i);
      s.trail.geometry.attributes.instanceStart.data.needsUpdate = true;
      s.path.frustumCulled = false;
      group.add(s.path, s.trail);
    }
    return s;
  }

  function boneColor(k, j, ok) {
    if (!ok) return COL.invalid;
    if (state.mode === "overlay" && k > 0) return OVERLAY_COLORS[(k - 1) % OVERLAY_COLORS.length];
    return COL[side(j)];
  }

  function updateSkeleton(k, p, t) {
    const s = skeletons[k][p], arr = pose[k][p], o = t * J * 3, ok = valid[p][t] === 1;
    const at = (j) => [arr[o + 3 * j], arr[o + 3 * j + 1], arr[o + 3 * j + 2]];
    const finite = (j) => Number.isFinite(arr[o + 3 * j]) && Number.isFinite(arr[o + 3 * j + 1]) &&
      Number.isFinite(arr[o + 3 * j + 2]);
    const pos = s.bones.geometry.attributes.instanceStart.data;
    const col = s.bones.geometry.attributes.instanceColorStart.data;
    const shadow = s.shadow.geometry.attributes.instanceStart.data;
    let n = 0;
    for (const [a, b] of BONES) {
      if (!finite(a) || !finite(b)) continue;
      const pa = at(a), pb = at(b), c = color(boneColor(k, b, ok));
      pos.array.set([...pa, ...pb], 6 * n);
      shadow.array.set([pa[0], pa[1], 0.001, pb[0], pb[1], 0.001], 6 * n);
      col.array.set([c.r, c.g, c.b, c.r, c.g, c.b], 6 * n);
      n++;
    }
    pos.needsUpdate = col.needsUpdate = shadow.needsUpdate = true;
    s.bones.geometry.instanceCount = s.shadow.geometry.instanceCount = n;
    const m = new THREE.Matrix4();
    let nj = 0;
    for (let j = 0; j < J; j++) {
      if (!finite(j)) continue;
      m.makeTranslation(...at(j));
      s.joints.setMatrixAt(nj, m);
      s.joints.setColorAt(nj, color(boneColor(k, j, ok)));
      nj++;
    }
    s.joints.count = nj;
    s.joints.instanceMatrix.needsUpdate = true;
    if (s.joints.instanceColor) s.joints.instanceColor.needsUpdate = true;
    if (s.trail) s.trail.geometry.instanceCount = Math.max(s.travelled[t] - 1, 0);
  }

  function setup3d() {
    try {
      renderer = new THREE.WebGLRenderer({ canvas: canvas3d, antialias: true });
    } catch (err) {
      state.webglError = "WebGL is not available in this browser: " + err.message;
      $("message3d").textContent = state.webglError;
      $("message3d").hidden = false;
      return;
    }
    renderer.setPixelRatio(window.devicePixelRatio || 1);
    renderer.setScissorTest(true);
    scene = new THREE.Scene();
    limits = computeLimits();
    scene.add(groundAndGrid());
    for (let k = 0; k < K; k++) {
      skeletons.push([]);
      for (let p = 0; p < P; p++) {
        const s = makeSkeleton(k, p);
        skeletons[k].push(s);
        scene.add(s.group);
      }
    }
    camera = new THREE.PerspectiveCamera(DATA.view.fov, 1, 0.01, 200);
    camera.up.set(0, 0, 1);  // z is up in the world poses
    controls = new THREE.OrbitControls(camera, canvas3d);
    controls.addEventListener("change", render3d);
    resetView();
  }

  function viewports() {  // [[x, y, w, h, [checkpoints]]] in CSS pixels, y from the bottom as WebGL counts
    const w = view3d.clientWidth, h = view3d.clientHeight;
    if (state.mode === "overlay" || K === 1) return [[0, 0, w, h, [...Array(K).keys()]]];
    const cols = K <= 3 ? K : Math.ceil(Math.sqrt(K)), rows = Math.ceil(K / cols);
    const vw = w / cols, vh = h / rows;
    return [...Array(K).keys()].map((k) => [(k % cols) * vw, (rows - 1 - Math.floor(k / cols)) * vh, vw, vh, [k]]);
  }

  // Follow mode keeps the followed person (person 0 of the first checkpoint) in the middle of the view: on a long
  // trajectory the whole scene would leave the skeleton a few pixels tall. The user's orbit is kept: the camera
  // moves with the pelvis.
  function pelvisAt(t) {
    const arr = pose[0][0], o = t * J * 3;
    const q = [arr[o], arr[o + 1], arr[o + 2]];
    return q.every(Number.isFinite) ? new THREE.Vector3(...q) : null;
  }
  let followed = null;  // the pelvis position the view was last centred on
  function follow(t) {
    const now = pelvisAt(t);
    if (!state.follow || !now) return;
    if (!followed) { followed = now; return; }  // no pelvis when the view was set: start following from here
    const delta = now.clone().sub(followed);
    camera.position.add(delta);
    controls.target.add(delta);
    followed = now;
    controls.update();
  }
  function bodyRadius() {  // half the largest extent of the followed person's pose over the clip, plus a margin
    let r = 0.5;
    const arr = pose[0][0];
    for (let t = 0; t < T; t++) {
      const o = t * J * 3;
      for (let j = 0; j < J; j++) {
        const d = Math.hypot(arr[o + 3 * j] - arr[o], arr[o + 3 * j + 1] - arr[o + 1], arr[o + 3 * j + 2] - arr[o + 2]);
        if (Number.isFinite(d)) r = Math.max(r, d);
      }
    }
    return r + DATA.view.margin;
  }

  function resetView() {  // the rendered video's view: Matplotlib's elev/azim; the whole clip, or the person followed
    if (!renderer) return;
    const [, , vw, vh] = viewports()[0];
    const lo = limits.lo, hi = limits.hi;
    let centre = new THREE.Vector3((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, (lo[2] + hi[2]) / 2);
    let radius = (Math.hypot(hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]) / 2) * 0.7;  // corners: mostly empty ground
    followed = state.follow ? pelvisAt(state.frame) : null;
    if (followed) {
      centre = followed.clone();
      radius = bodyRadius();
    }
    // Fit a sphere of that radius into the narrower of the two fields of view.
    const half = (DATA.view.fov * Math.PI) / 360;
    const narrow = Math.min(half, Math.atan(Math.tan(half) * (vw / Math.max(vh, 1))));
    const dist = radius / Math.sin(narrow);
    const e = (DATA.view.elev * Math.PI) / 180, a = (DATA.view.azim * Math.PI) / 180;
    camera.position.set(centre.x + dist * Math.cos(e) * Math.cos(a), centre.y + dist * Math.cos(e) * Math.sin(a),
      centre.z + dist * Math.sin(e));
    controls.target.copy(centre);
    controls.update();
    render3d();
  }

  function render3d() {
    if (!renderer) return;
    const ports = viewports();
    for (const [x, y, w, h, ks] of ports) {
      renderer.setViewport(x, y, w, h);
      renderer.setScissor(x, y, w, h);
      renderer.setClearColor(color(COL.background));
      camera.aspect = w / Math.max(h, 1);
      camera.updateProjectionMatrix();
      skeletons.forEach((perK, k) => perK.forEach((s) => { s.group.visible = ks.includes(k); }));
      renderer.render(scene, camera);
    }
    state.renders3d++;
  }

  // ---- labels over the 3D views --------------------------------------------------------------------------------
  function fmt(mm) { return Number.isFinite(mm) ? mm.toFixed(0) + " mm" : "-"; }
  function layoutLabels() {
    const box = $("labels3d");
    box.replaceChildren();
    const ports = viewports(), h = view3d.clientHeight;
    ports.forEach(([x, y, w, vh, ks]) => {
      const label = document.createElement("div");
      label.className = "view-label";
      label.style.left = x + "px";
      label.style.top = (h - y - vh) + "px";
      label.style.width = w + "px";
      label.style.height = vh + "px";
      for (const k of ks) {
        const line = document.createElement("div");
        line.className = "ckpt";
        if (ks.length > 1) {
          const swatch = document.createElement("span");
          swatch.className = "swatch";
          swatch.style.background = k === 0 ? COL.center : OVERLAY_COLORS[(k - 1) % OVERLAY_COLORS.length];
          line.append(swatch);
        }
        const name = document.createElement("span");
        name.textContent = DATA.checkpoints[k];
        const dis = document.createElement("span");
        dis.className = "dis";
        dis.dataset.k = String(k);
        const flip = document.createElement("span");
        flip.className = "dis flip";
        flip.dataset.k = String(k);
        line.append(name, dis, flip);
        label.append(line);
      }
      const banner = document.createElement("div");
      banner.className = "banner";
      banner.textContent = "no detection";
      label.append(banner);
      box.append(label);
    });
    updateLabels();
  }
  function updateLabels() {
    const t = state.frame, ok = valid[0][t] === 1;
    document.querySelectorAll("#labels3d .dis:not(.flip)").forEach((el) => {
      const k = Number(el.dataset.k);
      el.textContent = k === 0 ? (K > 1 ? "reference" : "") :
        `vs first: ${fmt(disagreement[k][t])} this frame, ${fmt(clipMean[k])} clip mean`;
    });
    document.querySelectorAll("#labels3d .flip").forEach((el) => {
      el.textContent = flipSpread ? `flip test passes ${fmt(flipSpread[Number(el.dataset.k)][t])} apart` : "";
    });
    document.querySelectorAll("#labels3d .banner, #banner2d").forEach((el) => { el.hidden = ok; });
    const videoFrame = DATA.frameOffset ? ` (video frame ${t + DATA.frameOffset})` : "";
    $("frameinfo").textContent = `frame ${t} / ${T - 1}${videoFrame}` +
      `  ${((t + DATA.frameOffset) / DATA.fps).toFixed(2)} s`;
  }

  // ---- 2D overlay ---------------------------------------------------------------------------------------------
  function draw2d() {
    const ctx = overlay.getContext("2d"), t = state.frame;
    ctx.clearRect(0, 0, overlay.width, overlay.height);
    const sx = overlay.width / DATA.imageSize[0], sy = overlay.height / DATA.imageSize[1];
    const lw = Math.max(2, Math.round(overlay.height / 240));
    for (let p = 0; p < P; p++) {
      const ok = valid[p][t] === 1, o = t * J * 2, arr = kp2d[p];
      const pt = (j) => [arr[o + 2 * j] * sx, arr[o + 2 * j + 1] * sy];
      const fin = (j) => Number.isFinite(arr[o + 2 * j]) && Number.isFinite(arr[o + 2 * j + 1]);
      const conf = (j) => !confident || confident[p][t * J + j] === 1;
      const tint = (j, c) => (!ok ? COL.invalid : conf(j) ? c : COL.dimmed[side(j)]);
      ctx.lineWidth = lw;
      ctx.lineCap = "round";
      ctx.setLineDash(ok ? [] : [4 * lw, 4 * lw]);
      for (const [a, b] of BONES) {
        if (!fin(a) || !fin(b)) continue;
        ctx.strokeStyle = conf(a) && conf(b) ? tint(b, COL[side(b)]) : ok ? COL.dimmed[side(b)] : COL.invalid;
        ctx.beginPath();
        ctx.moveTo(...pt(a));
        ctx.lineTo(...pt(b));
        ctx.stroke();
      }
      for (let j = 0; j < J; j++) {
        if (!fin(j)) continue;
        ctx.fillStyle = tint(j, COL[side(j)]);
        ctx.beginPath();
        ctx.arc(...pt(j), lw + 1, 0, 2 * Math.PI);
        ctx.fill();
      }
    }
  }

  // ---- the frame: one index drives the 2D overlay, the 3D views, the slider and the labels -------------------
  function showFrame(t) {
    t = Math.max(0, Math.min(T - 1, t | 0));
    state.frame = t;
    slider.value = String(t);
    draw2d();
    if (renderer) {
      for (let k = 0; k < K; k++) for (let p = 0; p < P; p++) updateSkeleton(k, p, t);
      follow(t);
      render3d();
    }
    updateLabels();
  }

  // Video time -> row: frame i is shown from i/fps on; seeks aim at the middle of a frame, (i + 0.5)/fps.
  const rowAt = (seconds) => Math.floor(seconds * DATA.fps + 1e-3) - DATA.frameOffset;
  const videoOk = () => !state.videoError && video.readyState >= 1;

  function seek(t) {
    t = Math.max(0, Math.min(T - 1, t | 0));
    showFrame(t);
    if (videoOk() && (video.seeking || rowAt(video.currentTime) !== t)) {
      video.currentTime = (t + DATA.frameOffset + 0.5) / DATA.fps;
    }
  }
  function step(delta) { pause(); seek(state.frame + delta); }

  function onVideoTime(seconds) {
    // A callback from before the user's latest seek: the frame the user chose leads, the video is on its way.
    if (!state.playing && video.seeking) return;
    // At its very end a video reports currentTime = duration while it still shows its last frame.
    if (video.duration && seconds >= video.duration - 1e-6) seconds = video.duration - 0.5 / DATA.fps;
    const row = rowAt(seconds);
    state.shownVideoFrame = row + DATA.frameOffset;
    if (row < 0 || row >= T) {  // the clip goes on beyond the processed part (--start, --end): stop at its edge
      if (state.playing) pause();
      seek(row < 0 ? 0 : T - 1);
      return;
    }
    if (row !== state.frame) showFrame(row);
  }

  // Without a playable video (missing file, codec) a clock plays the poses alone.
  let clock = null;
  function clockTick(now) {
    if (!clock) return;
    const row = clock.row + Math.floor(((now - clock.start) / 1000) * DATA.fps);
    if (row >= T) { pause(); return; }
    if (row !== state.frame) showFrame(row);
    requestAnimationFrame(clockTick);
  }
  function play() {
    if (state.frame >= T - 1) seek(0);
    state.playing = true;
    $("play").textContent = "\u275a\u275a";
    if (videoOk()) {
      video.play().catch((err) => { state.videoError = "cannot play the video: " + err.message; showVideoError(); });
      if (!("requestVideoFrameCallback" in video)) requestAnimationFrame(pollVideo);
    } else {
      clock = { row: state.frame, start: performance.now() };
      requestAnimationFrame(clockTick);
    }
  }
  function pause() {
    state.playing = false;
    clock = null;
    $("play").textContent = "\u25b6";
    if (!video.paused) video.pause();
  }
  function pollVideo() {  // browsers without requestVideoFrameCallback: follow currentTime while playing
    if (!state.playing) return;
    onVideoTime(video.currentTime);
    requestAnimationFrame(pollVideo);
  }
  if ("requestVideoFrameCallback" in video) {
    const onFrame = (now, meta) => { onVideoTime(meta.mediaTime); video.requestVideoFrameCallback(onFrame); };
    video.requestVideoFrameCallback(onFrame);
  }
  video.addEventListener("seeked", () => { if (!state.playing) onVideoTime(video.currentTime); });
  video.addEventListener("ended", pause);
  video.addEventListener("pause", () => {  // paused by us or by the browser: both stay on the frame it stopped on
    // The event is queued, not immediate: a pause then a quick play (two presses of Space) delivers it after play()
    // has started the video again, and acting on it would stop the new playback at once.
    if (!video.paused) return;
    if (state.playing && !clock) pause();
    if (video.seeking || state.videoError) return;  // a step or the slider already chose the frame
    // A playing video can show a frame slightly ahead of its clock: seek to the middle of the frame at the clock
    // so that the picture, the time and the 3D agree.
    let seconds = video.currentTime;
    if (video.duration && seconds >= video.duration - 1e-6) seconds = video.duration - 0.5 / DATA.fps;
    const row = Math.max(0, Math.min(T - 1, rowAt(seconds)));
    showFrame(row);
    video.currentTime = (row + DATA.frameOffset + 0.5) / DATA.fps;
  });
  video.addEventListener("loadedmetadata", () => { layout(); seek(state.frame); });
  function showVideoError() {
    $("message2d").textContent = state.videoError + " \u2014 the poses still play without it.";
    $("message2d").hidden = false;
  }
  video.addEventListener("error", () => {
    const codes = { 1: "aborted", 2: "network error", 3: "cannot decode", 4: "file missing or format not supported" };
    state.videoError = `cannot play ${DATA.videoName}: ${codes[video.error && video.error.code] || "error"}`;
    showVideoError();
  });

  // ---- controls -----------------------------------------------------------------------------------------------
  $("play").addEventListener("click", () => (state.playing ? pause() : play()));
  $("prev").addEventListener("click", () => step(-1));
  $("next").addEventListener("click", () => step(1));
  $("reset").addEventListener("click", resetView);
  const followLabel = () => { $("follow").textContent = state.follow ? "whole scene" : "follow person"; };
  followLabel();
  $("follow").addEventListener("click", () => {
    state.follow = !state.follow;
    followLabel();
    resetView();
  });
  $("mode").addEventListener("click", () => {
    state.mode = state.mode === "split" ? "overlay" : "split";
    $("mode").textContent = state.mode === "split" ? "overlay checkpoints" : "one view each";
    layoutLabels();
    showFrame(state.frame);
  });
  slider.addEventListener("input", () => { pause(); seek(Number(slider.value)); });
  document.addEventListener("keydown", (ev) => {
    const keys = { ArrowLeft: -1, ArrowRight: 1 };
    if (ev.key in keys) { ev.preventDefault(); step(keys[ev.key] * (ev.shiftKey ? 10 : 1)); }
    else if (ev.key === " " && ev.target.tagName !== "BUTTON") {
      ev.preventDefault();
      if (state.playing) pause(); else play();
    }
    else if (ev.key === "Home") { ev.preventDefault(); step(-T); }
    else if (ev.key === "End") { ev.preventDefault(); step(T); }
  });

  // ---- layout -------------------------------------------------------------------------------------------------
  function layout() {
    const area = $("left"), [w, h] = DATA.imageSize;
    const scale = Math.min(area.clientWidth / w, area.clientHeight / h);
    const stage = $("stage");
    stage.style.width = Math.floor(w * scale) + "px";
    stage.style.height = Math.floor(h * scale) + "px";
    const dpr = window.devicePixelRatio || 1;
    overlay.width = Math.round(w * scale * dpr);
    overlay.height = Math.round(h * scale * dpr);
    if (renderer) renderer.setSize(view3d.clientWidth, view3d.clientHeight, false);
    layoutLabels();
    showFrame(state.frame);
  }
  window.addEventListener("resize", layout);

  // ---- read-only state for tests and scripts -------------------------------------------------------------------
  function snapshot() {
    const t = state.frame;
    const frame3d = pose.map((perK) => perK.map((arr) => {
      const out = [];
      for (let j = 0; j < J; j++) out.push(Array.from(arr.subarray((t * J + j) * 3, (t * J + j) * 3 + 3)));
      return out;
    }));
    const frame2d = kp2d.map((arr) => {
      const out = [];
      for (let j = 0; j < J; j++) out.push(Array.from(arr.subarray((t * J + j) * 2, (t * J + j) * 2 + 2)));
      return out;
    });
    return Object.freeze({
      ready: state.ready, frame: t, frames: T, frameOffset: DATA.frameOffset, fps: DATA.fps,
      playing: state.playing, mode: state.mode, follow: state.follow,
      videoTime: video.currentTime, shownVideoFrame: state.shownVideoFrame,
      videoError: state.videoError, webglError: state.webglError, renders3d: state.renders3d,
      valid: valid.map((v) => v[t] === 1), pose3d: frame3d, keypoints2d: frame2d,
      disagreementMm: disagreement.map((d) => (d ? d[t] : null)), clipMeanDisagreementMm: clipMean.slice(),
      flipSpreadMm: flipSpread ? flipSpread.map((f) => f[t]) : null,
      camera: camera ? camera.position.toArray() : null, target: controls ? controls.target.toArray() : null,
      viewports: renderer ? viewports().map(([x, y, w, h, ks]) => ({ x, y, w, h, checkpoints: ks })) : [],
      trajectory: Boolean(traj),
    });
  }
  Object.defineProperty(window, "viewerState", { get: snapshot, enumerable: true });

  video.src = DATA.videoUrl;
  setup3d();
  layout();
  state.ready = true;
})();
