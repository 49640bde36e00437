// recording.js — the reference client's recording controls: a Record button for participants
// whose token grants `record` (start_recording / stop_recording over signaling), and, once a
// recording stops, an export of aligned FLAC stems through the REST API with download links.

const $ = (id) => document.getElementById(id);

/** Recording state shown by the page; exposed on window.veza.recording for tests. */
export const recording = {
  active: null, // id of the session's running recording
  last: null, // id of the last recording that stopped
  exportState: null, // null | 'running' | 'done' | 'failed'
  files: [], // [{name, url}]
};

export function onRecordingStarted(m) {
  recording.active = m.recording_id;
}

export function onRecordingStopped(m) {
  recording.active = null;
  recording.last = m.recording_id;
  recording.exportState = null;
  recording.files = [];
}

/** Updates the button and the downloads; `grants` and `joined` come from the app's state. */
export function renderRecording({ grants, joined }) {
  const allowed = Boolean(joined && grants?.record);
  const button = $('record');
  button.hidden = !allowed;
  button.disabled = !allowed;
  button.textContent = recording.active ? 'Stop recording' : 'Record';
  button.classList.toggle('active', Boolean(recording.active));
  button.setAttribute('aria-pressed', String(Boolean(recording.active)));
  const box = $('recordings');
  box.hidden = !allowed || !recording.last;
  $('export-stems').disabled = recording.exportState === 'running';
  $('export-state').textContent =
    recording.exportState === 'running' ? 'Exporting…' : recording.exportState === 'failed' ? 'Export failed' : '';
  const list = $('downloads');
  list.replaceChildren(
    ...recording.files.map((f) => {
      const li = document.createElement('li');
      const a = document.createElement('a');
      a.href = f.url;
      a.textContent = f.name;
      a.download = f.name;
      li.append(a);
      return li;
    }),
  );
}

/** Exports the last recording as 24-bit FLAC stems and lists the files when done. */
export async function exportStems({ sessionId, token }, render) {
  const rid = recording.last;
  if (!rid) return;
  const headers = { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' };
  const base = `/v1/sessions/${encodeURIComponent(sessionId)}/recordings/${encodeURIComponent(rid)}`;
  recording.exportState = 'running';
  render();
  try {
    const body = JSON.stringify({ format: 'flac', layout: 'stems', bit_depth: 24 });
    let res = await fetch(`${base}/exports`, { method: 'POST', headers, body });
    let job = await res.json();
    if (!res.ok) throw new Error(job.message ?? res.statusText);
    while (job.state === 'queued' || job.state === 'running') {
      await new Promise((r) => setTimeout(r, 500));
      res = await fetch(`${base}/exports/${job.id}`, { headers });
      job = await res.json();
      if (!res.ok) throw new Error(job.message ?? res.statusText);
    }
    if (job.state !== 'done') throw new Error(job.error ?? job.state);
    // Links carry the token: a plain <a download> cannot send a header.
    recording.files = job.files.map((f, i) => ({
      name: f.name,
      url: `${job.urls[i]}?access_token=${encodeURIComponent(token)}`,
    }));
    recording.exportState = 'done';
  } catch (err) {
    console.warn('veza: export failed', err);
    recording.exportState = 'failed';
  }
  render();
}
