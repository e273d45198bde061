// The original's log page: the job id from the address, then GET /api/jobs/<id> for query, id and log.
var jobId = new URLSearchParams(location.search).get('job_id');
fetch('/api/jobs/' + jobId).then(function (r) { return r.json(); }).then(function (job) {
  document.getElementById('title').textContent = 'log: ' + job.query + ' (' + job.id + ')';
  document.getElementById('content').textContent = job.log || '(no log)';
});
