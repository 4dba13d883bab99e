// Shoal dashboard: plain JavaScript, no build step. The server pushes the
// cluster's state and its events over one server-sent event stream
// (/api/stream); every view is rendered from them. Text from the cluster
// is always set as text, never as HTML.
'use strict';

const S = {
  state: null,     // the latest State from the server
  events: [],      // cluster events, oldest first
  drafts: {},      // values typed into inputs, by data-key, kept across renders
  live: false,
  logs: null,      // {id, el, source} of the open service page's log pane
};
const MAX_EVENTS = 300;

// h builds an element: h('td', {class: 'x', 'data-k': 'v', onclick: f}, 'text', child, [more]).
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'value') el.value = v;
    else if (k === 'style') {
      // Through the CSSOM: the page's CSP refuses style attributes.
      for (const decl of String(v).split(';')) {
        const i = decl.indexOf(':');
        if (i > 0) el.style.setProperty(decl.slice(0, i).trim(), decl.slice(i + 1).trim());
      }
    }
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  const add = (c) => {
    if (c === null || c === undefined || c === false) return;
    if (Array.isArray(c)) c.forEach(add);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  };
  children.forEach(add);
  return el;
}

const $ = (sel) => document.querySelector(sel);
const short = (id) => (id || '').slice(0, 12);
const cpus = (n) => (n / 1e9).toFixed(n % 1e9 === 0 ? 0 : 2).replace(/\.?0+$/, '') || '0';
function bytes(b) {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return (i === 0 ? b : b.toFixed(1)) + u[i];
}
function clock(ms) {
  if (!ms) return '-';
  const d = new Date(ms);
  return d.toLocaleTimeString([], {hour12: false}) + '.' + String(d.getMilliseconds()).padStart(3, '0');
}
function ago(ms) {
  if (!ms) return '-';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 2) return 'just now';
  if (s < 60) return s + 's ago';
  if (s < 7200) return Math.round(s / 60) + 'm ago';
  return Math.round(s / 3600) + 'h ago';
}
// hue gives each service its own colour in the grid.
function hue(name) {
  let x = 0;
  for (const c of name) x = (x * 31 + c.charCodeAt(0)) % 360;
  return x;
}
function badge(text, kind) { return h('span', {class: 'badge ' + (kind || String(text).toLowerCase().replace(/[^a-z]+/g, '-'))}, text); }

// ---------------------------------------------------------------- actions

let flashTimer = null;
function flash(text, isError) {
  const el = $('#flash');
  el.textContent = text;
  el.className = 'flash ' + (isError ? 'error' : 'ok');
  el.hidden = false;
  clearTimeout(flashTimer);
  flashTimer = setTimeout(() => { el.hidden = true; }, isError ? 10000 : 4000);
}

async function act(path, body, button, draftKey) {
  if (button) button.disabled = true;
  try {
    const r = await fetch(path, {
      method: 'POST', credentials: 'same-origin',
      headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body || {}),
    });
    let j = {};
    try { j = await r.json(); } catch (e) { j = {error: r.status + ' ' + r.statusText}; }
    if (!r.ok) { flash(j.error || (r.status + ' ' + r.statusText), true); return false; }
    flash(j.message || 'done');
    if (draftKey) delete S.drafts[draftKey];
    return true;
  } catch (e) {
    flash('the dashboard server does not answer: ' + e.message, true);
    return false;
  } finally {
    if (button) button.disabled = false;
  }
}

// input is a text or number input whose typed value survives re-renders.
function input(key, value, attrs) {
  const v = key in S.drafts ? S.drafts[key] : value;
  return h('input', Object.assign({'data-key': key, value: v,
    oninput: (e) => { S.drafts[key] = e.target.value; }}, attrs || {}));
}

function scaleControl(svc) {
  if (!svc.scalable) return h('span', {class: 'muted'}, svc.mode);
  const key = 'scale-' + svc.id;
  const box = input(key, svc.desired, {type: 'number', min: 0, max: 100000, class: 'replicas', 'data-scale': svc.name, 'aria-label': 'replicas of ' + svc.name});
  const go = (btn) => {
    const n = parseInt(S.drafts[key] ?? box.value, 10);
    if (Number.isNaN(n)) { flash('give a number of replicas', true); return; }
    act('/api/services/' + encodeURIComponent(svc.id) + '/scale', {replicas: n}, btn, key);
  };
  box.addEventListener('keydown', (e) => { if (e.key === 'Enter') go(null); });
  return h('span', {class: 'scale'}, box,
    h('button', {'data-scale-button': svc.name, onclick: (e) => go(e.target)}, 'Scale'));
}

function nodeButtons(n) {
  return ['active', 'pause', 'drain'].map((av) => h('button', {
    class: 'small' + (av === 'drain' ? ' warn' : ''),
    'data-availability': av, 'data-node-button': n.hostname,
    disabled: n.availability.toLowerCase() === av,
    onclick: (e) => act('/api/nodes/' + encodeURIComponent(n.id) + '/availability', {availability: av}, e.target),
  }, av === 'active' ? 'Activate' : av === 'pause' ? 'Pause' : 'Drain'));
}

// ---------------------------------------------------------------- views

function table(headers, rows, attrs) {
  return h('table', attrs || {},
    h('thead', {}, h('tr', {}, headers.map((x) => h('th', {}, x)))),
    h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', {colspan: headers.length, class: 'muted'}, 'none'))));
}

function card(label, value, attrs) {
  return h('div', {class: 'card'}, h('div', {class: 'label'}, label), h('div', Object.assign({class: 'value'}, attrs || {}), value));
}

function counts(by) {
  const keys = Object.keys(by || {}).sort();
  if (!keys.length) return h('span', {class: 'muted'}, 'none');
  return keys.map((k) => h('span', {class: 'count'}, badge(k), ' ', by[k]));
}

function eventRows(events) {
  return events.map((e) => h('tr', {'data-event': e.type + ' ' + e.action + ' ' + (e.name || '')},
    h('td', {class: 'mono'}, clock(e.time)),
    h('td', {}, badge(e.type, 'type-' + e.type)),
    h('td', {}, e.action),
    h('td', {}, e.name || short(e.id)),
    h('td', {class: 'attrs'}, Object.entries(e.attributes || {}).filter(([, v]) => v).sort()
      .map(([k, v]) => k + '=' + (k === 'node' ? nodeName(v) : v)).join(', '))));
}

function nodeName(id) {
  const n = S.state && S.state.nodes.find((x) => x.id === id);
  return n ? n.hostname : short(id);
}

function overview(st) {
  const c = st.cluster;
  const current = st.tasks.filter((t) => t.current);
  return h('div', {},
    h('h1', {}, 'Overview'),
    h('div', {class: 'cards'},
      card('Cluster ID', c.id, {id: 'cluster-id', class: 'value mono small'}),
      card('Leader', c.leader_hostname || 'none (election in progress?)', {id: 'leader'}),
      card('Nodes', st.nodes.length, {id: 'node-count'}),
      card('Services', st.services.length, {id: 'service-count'}),
      card('Tasks', current.length, {id: 'task-count'})),
    h('div', {class: 'split'},
      h('section', {}, h('h2', {}, 'Nodes by state'), h('p', {}, counts(st.nodes_by_state))),
      h('section', {}, h('h2', {}, 'Tasks by state'), h('p', {id: 'tasks-by-state'}, counts(st.tasks_by_state)))),
    h('h2', {}, 'Managers'),
    table(['Hostname', 'Node', 'Raft state', 'Term', 'Commit index', 'Applied index', 'Voter', 'API address'],
      (c.managers || []).map((m) => h('tr', {'data-manager': m.hostname},
        h('td', {}, m.hostname, m.leader ? [' ', badge('leader')] : null),
        h('td', {class: 'mono'}, short(m.node_id)),
        h('td', {title: m.error || ''}, badge(m.state)),
        h('td', {}, m.term || '-'), h('td', {}, m.commit_index || '-'), h('td', {}, m.applied_index || '-'),
        h('td', {}, m.voter ? 'yes' : 'no'), h('td', {class: 'mono'}, m.api_addr)))),
    h('h2', {}, 'Services'),
    serviceTable(st),
    h('h2', {}, 'Latest events ', h('a', {href: '#/events', class: 'small'}, 'all')),
    table(['Time', 'Type', 'Action', 'Name', 'Details'], eventRows(S.events.slice(-10).reverse()), {class: 'events'}));
}

function bar(used, total) {
  const pct = total > 0 ? Math.min(100, Math.round(100 * used / total)) : 0;
  return h('span', {class: 'bar', title: pct + '%'}, h('span', {class: 'fill', style: 'width:' + pct + '%'}));
}

function nodes(st) {
  return h('div', {},
    h('h1', {}, 'Nodes'),
    table(['Hostname', 'Role', 'Status', 'Availability', 'Manager', 'CPU reserved', 'Memory reserved', 'Running', 'Set availability'],
      st.nodes.map((n) => h('tr', {'data-node-row': n.hostname},
        h('td', {}, n.hostname, h('div', {class: 'muted mono small'}, short(n.id) + ' ' + n.addr)),
        h('td', {}, n.role),
        h('td', {title: n.message || ''}, badge(n.state)),
        h('td', {'data-availability-of': n.hostname}, badge(n.availability)),
        h('td', {}, n.manager ? badge(n.manager) : ''),
        h('td', {}, bar(n.reserved_nano_cpus, n.nano_cpus), ' ', cpus(n.reserved_nano_cpus) + ' of ' + cpus(n.nano_cpus)),
        h('td', {}, bar(n.reserved_memory_bytes, n.memory_bytes), ' ', bytes(n.reserved_memory_bytes) + ' of ' + bytes(n.memory_bytes)),
        h('td', {}, n.running),
        h('td', {class: 'buttons'}, nodeButtons(n))))),
    h('h2', {}, 'Where tasks run'),
    grid(st));
}

// grid shows each node as a column of its tasks, as Swarm's visualizer.
function grid(st) {
  const live = st.tasks.filter((t) => t.current && t.node_id);
  return h('div', {class: 'grid', id: 'grid'}, st.nodes.map((n) => h('div', {class: 'column ' + n.state.toLowerCase() + ' ' + n.availability.toLowerCase(), 'data-node': n.hostname},
    h('div', {class: 'colhead'}, h('strong', {}, n.hostname), h('div', {class: 'small'}, n.role + ' · ' + n.state + ' · ' + n.availability)),
    live.filter((t) => t.node_id === n.id).map((t) => h('a', {
      class: 'chip ' + t.state, href: '#/services/' + t.service_id, 'data-task': t.name, 'data-state': t.state,
      style: '--hue:' + hue(t.service_name), title: t.name + ' ' + short(t.id) + ': ' + t.state + (t.error ? ' (' + t.error + ')' : ''),
    }, h('span', {}, t.name), h('span', {class: 'small'}, t.state))))));
}

function serviceTable(st) {
  return table(['Name', 'Mode', 'Replicas', 'Image', 'Ports', 'Update', 'Scale'],
    st.services.map((s) => h('tr', {'data-service': s.name},
      h('td', {}, h('a', {href: '#/services/' + s.id}, s.name)),
      h('td', {}, s.mode),
      h('td', {'data-replicas': s.name}, s.running + '/' + s.desired),
      h('td', {class: 'mono wrap'}, s.image),
      h('td', {class: 'mono'}, s.ports.join(', ')),
      h('td', {title: s.update_message || ''}, s.update_state ? badge(s.update_state) : ''),
      h('td', {}, scaleControl(s)))), {class: 'services'});
}

function services(st) {
  return h('div', {}, h('h1', {}, 'Services'), serviceTable(st));
}

function taskRows(tasks) {
  return tasks.map((t) => h('tr', {'data-task-row': t.name, class: t.current ? '' : 'history'},
    h('td', {}, t.name), h('td', {class: 'mono'}, short(t.id)),
    h('td', {}, t.node_name || '-'),
    h('td', {}, t.desired_state),
    h('td', {}, badge(t.state), ' ', h('span', {class: 'muted small'}, ago(t.since))),
    h('td', {}, t.health ? badge(t.health) : ''),
    h('td', {class: 'err'}, t.error || t.pending_reason || ''),
    h('td', {class: 'mono'}, t.ports || ''),
    h('td', {class: 'mono', 'data-usage': t.name}, usage(t.usage))));
}

// usage is a task's CPU and memory, as `service stats` shows them.
function usage(u) {
  if (!u) return '';
  let cpu = u.cpu_percent + '%';
  if (u.cpu_of_reservation) cpu += ' (' + u.cpu_of_reservation + '% of reserved)';
  let mem = u.memory_mib + ' MiB';
  if (u.memory_of_limit) mem += ' (' + u.memory_of_limit + '% of limit)';
  return cpu + ' · ' + mem;
}

function servicePage(st, id) {
  const s = st.services.find((x) => x.id === id || x.name === id);
  if (!s) {
    closeLogs();
    return h('div', {}, h('h1', {}, 'Service not found'), h('p', {}, 'No service ', h('code', {}, id), ' (removed?). ', h('a', {href: '#/services'}, 'All services')));
  }
  const tasks = st.tasks.filter((t) => t.service_id === s.id);
  const imageKey = 'image-' + s.id;
  const image = input(imageKey, s.image, {type: 'text', class: 'image', 'aria-label': 'new image', 'data-image': s.name});
  const headers = ['Task', 'ID', 'Node', 'Desired', 'State', 'Health', 'Error', 'Ports', 'CPU · memory'];
  return h('div', {},
    h('h1', {}, s.name, ' ', h('span', {class: 'muted mono small'}, s.id)),
    h('dl', {class: 'facts'},
      h('dt', {}, 'Mode'), h('dd', {}, s.mode),
      h('dt', {}, 'Replicas'), h('dd', {'data-replicas': s.name}, s.running + '/' + s.desired),
      h('dt', {}, 'Image'), h('dd', {class: 'mono'}, s.image + ' (' + s.runtime + ')'),
      h('dt', {}, 'Ports'), h('dd', {class: 'mono'}, s.ports.join(', ') || '-'),
      h('dt', {}, 'Update'), h('dd', {}, s.update_state ? [badge(s.update_state), ' ', s.update_message || ''] : '-')),
    h('div', {class: 'controls'},
      h('label', {}, 'Replicas ', scaleControl(s)),
      h('label', {}, 'Image ', image, h('button', {'data-action': 'image', onclick: (e) => act('/api/services/' + s.id + '/image', {image: S.drafts[imageKey] ?? image.value}, e.target, imageKey)}, 'Update')),
      h('button', {'data-action': 'rollback', disabled: !s.can_rollback, title: s.can_rollback ? '' : 'never updated', onclick: (e) => act('/api/services/' + s.id + '/rollback', {}, e.target)}, 'Roll back'),
      h('button', {'data-action': 'redeploy', onclick: (e) => act('/api/services/' + s.id + '/redeploy', {}, e.target)}, 'Force redeploy'),
      h('button', {class: 'danger', 'data-action': 'remove', onclick: (e) => {
        if (confirm('Remove service ' + s.name + ' and stop its tasks?')) {
          act('/api/services/' + s.id + '/remove', {}, e.target).then((ok) => { if (ok) location.hash = '#/services'; });
        }
      }}, 'Remove')),
    h('h2', {}, 'Tasks'),
    table(headers, taskRows(tasks.filter((t) => t.current)), {class: 'tasks', id: 'tasks'}),
    h('h2', {}, 'Logs'),
    logPane(s),
    h('h2', {}, 'History'),
    table(headers, taskRows(tasks.filter((t) => !t.current)), {class: 'tasks', id: 'history'}));
}

// logPane follows the service's output; the same element is kept across
// re-renders of the page, so the lines stay.
function logPane(s) {
  if (S.logs && S.logs.id === s.id) return S.logs.el;
  closeLogs();
  const el = h('pre', {class: 'logs', id: 'logs'});
  const source = new EventSource('/api/services/' + encodeURIComponent(s.id) + '/logs');
  const append = (nodes) => {
    const stick = el.scrollTop + el.clientHeight >= el.scrollHeight - 4;
    el.append(...nodes);
    while (el.childNodes.length > 2000) el.firstChild.remove();
    if (stick) el.scrollTop = el.scrollHeight;
  };
  source.addEventListener('lines', (m) => {
    append(JSON.parse(m.data).map((l) => h('div', {}, h('span', {class: 'prefix', style: '--hue:' + hue(l.prefix.split('.').slice(0, 2).join('.'))}, l.prefix + ' | '), l.line)));
  });
  source.addEventListener('note', (m) => append([h('div', {class: 'note'}, '— ' + JSON.parse(m.data) + ' —')]));
  S.logs = {id: s.id, el, source};
  return el;
}

function closeLogs() {
  if (S.logs) { S.logs.source.close(); S.logs = null; }
}

function secrets(st) {
  const rows = (list, attr) => list.map((x) => h('tr', {[attr]: x.name},
    h('td', {}, x.name), h('td', {class: 'mono'}, short(x.id)), h('td', {}, x.size + ' B'),
    h('td', {}, ago(x.created_at)), h('td', {}, ago(x.updated_at))));
  const headers = ['Name', 'ID', 'Size', 'Created', 'Updated'];
  return h('div', {},
    h('h1', {}, 'Secrets and configs'),
    h('h2', {}, 'Secrets'),
    h('p', {class: 'muted'}, 'Names and sizes only: the dashboard never reads a secret\'s value.'),
    table(headers, rows(st.secrets, 'data-secret'), {id: 'secrets'}),
    h('h2', {}, 'Configs'),
    table(headers, rows(st.configs || [], 'data-config'), {id: 'configs'}));
}

function eventsPage() {
  const key = 'event-filter';
  const filter = S.drafts[key] || '';
  const sel = h('select', {'data-key': key, onchange: (e) => { S.drafts[key] = e.target.value; render(); }},
    ['', 'service', 'node', 'task', 'secret', 'config'].map((t) => h('option', {value: t, selected: t === filter}, t || 'all types')));
  const evs = S.events.filter((e) => !filter || e.type === filter).slice().reverse();
  return h('div', {},
    h('h1', {}, 'Events ', sel),
    table(['Time', 'Type', 'Action', 'Name', 'Details'], eventRows(evs), {class: 'events', id: 'event-list'}));
}

// ---------------------------------------------------------------- rendering

function route() {
  const parts = (location.hash || '#/').replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  return {page: parts[0] || 'overview', arg: parts[1] || ''};
}

// A re-render between a button's press and its release would lose the
// click: while a pointer is down, renders wait for its release.
let pointerDown = false;
let renderWaiting = false;
document.addEventListener('pointerdown', () => { pointerDown = true; }, true);
const release = () => {
  pointerDown = false;
  if (renderWaiting) { renderWaiting = false; setTimeout(render, 0); }
};
document.addEventListener('pointerup', release, true);
document.addEventListener('pointercancel', release, true);

function render() {
  if (pointerDown) { renderWaiting = true; return; }
  const st = S.state;
  const {page, arg} = route();
  document.querySelectorAll('nav a').forEach((a) => a.classList.toggle('active', a.dataset.nav === page));
  if (page !== 'services' || !arg) closeLogs();
  if (!st) return;
  // Keep the focus and caret where the user is typing.
  const active = document.activeElement;
  const key = active && active.dataset ? active.dataset.key : null;
  const caret = key && active.selectionStart !== undefined ? [active.selectionStart, active.selectionEnd] : null;
  let view;
  switch (page) {
    case 'nodes': view = nodes(st); break;
    case 'services': view = arg ? servicePage(st, arg) : services(st); break;
    case 'secrets': view = secrets(st); break;
    case 'events': view = eventsPage(); break;
    default: view = overview(st);
  }
  const logs = S.logs && S.logs.el;
  const scroll = logs ? logs.scrollTop : 0;
  $('#main').replaceChildren(view);
  if (logs && logs.isConnected) logs.scrollTop = scroll;
  if (key) {
    const again = document.querySelector('[data-key="' + CSS.escape(key) + '"]');
    if (again) {
      again.focus();
      if (caret && again.setSelectionRange) { try { again.setSelectionRange(caret[0], caret[1]); } catch (e) { /* number inputs */ } }
    }
  }
  const banner = $('#banner');
  banner.hidden = !st.error;
  banner.textContent = st.error || '';
}

function showLive() {
  const el = $('#live');
  if (!S.live) { el.textContent = 'reconnecting…'; el.className = 'live down'; return; }
  const st = S.state;
  el.textContent = st ? 'live via ' + st.via + ' · changed ' + clock(st.updated_at) : 'live';
  el.className = 'live' + (st && st.error ? ' down' : ' up');
}

function connect() {
  const source = new EventSource('/api/stream');
  source.addEventListener('open', () => { S.live = true; showLive(); });
  source.addEventListener('state', (m) => {
    const st = JSON.parse(m.data);
    if (S.state && st.version < S.state.version) return;
    S.state = st;
    showLive();
    render();
  });
  source.addEventListener('events', (m) => {
    S.events = S.events.concat(JSON.parse(m.data)).slice(-MAX_EVENTS);
    render();
  });
  source.addEventListener('error', async () => {
    S.live = false;
    showLive();
    // A closed session will not come back by retrying.
    try {
      const r = await fetch('/api/state', {credentials: 'same-origin'});
      if (r.status === 401) {
        source.close();
        $('#banner').hidden = false;
        $('#banner').textContent = 'Logged out: run `shoal dashboard` again and open the URL it prints.';
      }
    } catch (e) { /* the server is away: EventSource retries */ }
  });
}

window.addEventListener('hashchange', render);
setInterval(showLive, 1000);
connect();
