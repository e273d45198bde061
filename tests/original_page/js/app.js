// The calls of the original tool's dashboard, in its order, reading only the fields it reads.
// Every call and every status a poll saw is recorded in window.seen for the test to check.
window.seen = { calls: [], polled: [], errors: [] };

function call(path, init) {
  window.seen.calls.push(((init && init.method) || 'GET') + ' ' + path);
  return fetch(path, init);
}

// The original's api(): JSON, and on an error status the message from `error` or `detail`.
function api(path) {
  return call(path).then(async function (r) {
    var text = await r.text();
    var data = text ? JSON.parse(text) : {};
    if (!r.ok) throw new Error(data.error || data.detail || text || r.statusText);
    return data;
  });
}

var runResult = document.getElementById('runResult');
var jobList = document.getElementById('jobList');
var btnRun = document.getElementById('btnRun');

function text(s) { var d = document.createElement('span'); d.textContent = s == null ? '' : String(s); return d.innerHTML; }

function renderJob(job) {
  var cells = [job.id, job.query, job.limit, job.out_dir, job.status].map(function (v) { return '<td>' + text(v) + '</td>'; });
  var actions = '';
  if (job.status === 'running') actions += '<button class="btn-cancel" data-job-id="' + job.id + '">cancel</button>';
  if (job.status === 'done' && job.count > 0) actions += '<button class="btn-images" data-job-id="' + job.id + '">images</button>';
  if (job.status !== 'running') actions += '<a class="btn-log" href="/static/log.html?job_id=' + job.id + '">log</a>';
  actions += '<button class="btn-delete" data-job-id="' + job.id + '">delete</button>';
  if ((job.status === 'failed' || job.status === 'cancelled') && job.error) actions += '<div class="error">' + text(job.error) + '</div>';
  var started = job.started_at ? Math.floor((Date.now() - new Date(job.started_at).getTime()) / 1000) : 0;
  return '<tr data-job-id="' + job.id + '" data-count="' + text(job.count) + '" data-started="' + started + '">' +
    cells.join('') + '<td>' + actions + '</td></tr>';
}

function refreshJobs() {
  api('/api/jobs?page=1&per_page=10').then(function (data) {
    var list = data.jobs || [];
    jobList.dataset.total = data.total || 0;
    jobList.dataset.page = data.page || 1;
    jobList.innerHTML = (data.total || 0) === 0 ? '<p class="empty">no jobs</p>' :
      '<table><tbody>' + list.map(renderJob).join('') + '</tbody></table>';
  }).catch(function (e) { jobList.innerHTML = '<p class="empty">' + text(e.message) + '</p>'; });
}

async function showJobImages(jobId) {
  var grid = document.getElementById('modalGrid');
  var job = await api('/api/jobs/' + jobId);
  document.getElementById('modalTitle').textContent = job.query + ' (' + (job.count || 0) + ')';
  var data = await api('/api/jobs/' + jobId + '/images');
  grid.innerHTML = (data.files || []).map(function (f) {
    return '<img src="/api/jobs/' + jobId + '/images/' + encodeURIComponent(f) + '" alt="">';
  }).join('') || '<p class="empty">no images</p>';
}

document.addEventListener('click', async function (e) {
  var id = e.target.dataset.jobId;
  if (e.target.classList.contains('btn-cancel')) { await call('/api/jobs/' + id + '/cancel', { method: 'POST' }); refreshJobs(); }
  if (e.target.classList.contains('btn-images')) showJobImages(id);
  if (e.target.classList.contains('btn-delete')) {
    if (!confirm('delete this entry? (saved images are not deleted)')) return;
    var r = await call('/api/jobs/' + id, { method: 'DELETE' });
    var t = await r.text(); var d = t ? JSON.parse(t) : {};
    if (r.ok) refreshJobs(); else window.seen.errors.push(d.error || d.detail);
  }
});

document.getElementById('btnClearHistory').onclick = async function () {
  if (!confirm('clear the history?')) return;
  await call('/api/jobs/clear', { method: 'POST' });
  refreshJobs();
};

btnRun.addEventListener('click', async function () {
  var query = document.getElementById('query').value.trim();
  var limit = parseInt(document.getElementById('limit').value, 10) || 20;
  var out_dir = document.getElementById('out_dir').value.trim() || 'data/naver_collected';
  btnRun.disabled = true;
  try {
    var res = await call('/api/run', { method: 'POST', headers: { 'Content-Type': 'application/json' },
                                       body: JSON.stringify({ query: query, limit: limit, out_dir: out_dir }) });
    var data = await res.json();
    if (!res.ok) throw new Error(data.detail || 'failed');
    var jobId = data.job_id;
    runResult.textContent = 'job ' + jobId + ' running';
    refreshJobs();
    var interval = setInterval(async function () {
      var job = await api('/api/jobs/' + jobId);
      window.seen.polled.push(job.status);
      if (job.status !== 'running') {
        clearInterval(interval);
        btnRun.disabled = false;
        runResult.dataset.status = job.status;
        if (job.status === 'done') runResult.textContent = 'done: ' + job.out_dir + ', ' + job.count;
        else runResult.textContent = job.status + ': ' + (job.error || '').substring(0, 200);
        refreshJobs();
      }
    }, 1000);
  } catch (e) {
    runResult.dataset.status = 'refused';
    runResult.textContent = e.message;
    btnRun.disabled = false;
  }
});

refreshJobs();
