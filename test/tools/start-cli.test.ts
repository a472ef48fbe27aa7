// The demo's contract, end to end: `node dist/tools/start.js` as npm start runs it.
import test from 'ava';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const entry = fileURLToPath(new URL('../../tools/start.js', import.meta.url));

function run(args: string[], timeoutMs: number): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [entry, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    // The process must exit by itself: a dangling handle shows up as this timeout.
    const timer = setTimeout(() => {
      p.kill('SIGKILL');
      reject(new Error(`start did not exit within ${timeoutMs} ms; stderr: ${err.slice(-500)}`));
    }, timeoutMs);
    p.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, out, err });
    });
  });
}

test('--json: exit 0, the last stdout line is the documented object, the audit is clean, progress went to stderr', async (t) => {
  const r = await run(['--guests', '2', '--seconds', '1.5', '--json'], 30_000);
  t.is(r.code, 0, r.err);
  const lines = r.out.trimEnd().split('\n');
  const last = JSON.parse(lines[lines.length - 1]!);
  t.deepEqual(Object.keys(last), ['guests', 'seconds', 'packets', 'bytes', 'pps', 'gbps', 'returnLatencyUs', 'audit']);
  t.deepEqual(Object.keys(last.returnLatencyUs), ['p50', 'p99']);
  t.deepEqual(Object.keys(last.audit), ['granted', 'returned', 'outstanding', 'leaked', 'earlyReturns', 'doubleReturns', 'corruptPayloads']);
  t.is(last.guests, 2);
  t.true(last.packets > 0 && last.bytes > 0 && last.pps > 0 && last.gbps > 0);
  t.true(last.seconds >= 1.4 && last.seconds < 3);
  t.true(last.returnLatencyUs.p50 > 0 && last.returnLatencyUs.p50 <= last.returnLatencyUs.p99);
  const a = last.audit;
  t.deepEqual([a.outstanding, a.leaked, a.earlyReturns, a.doubleReturns, a.corruptPayloads], [0, 0, 0, 0, 0]);
  t.true(a.granted > 0 && a.returned === a.granted);
  // Progress is on stderr (plain lines when not a TTY), never on stdout.
  t.regex(r.err, /^\s*1 s .* pkt\/s .*Gbit\/s .*outstanding \d+/m);
  t.false(r.out.includes('pkt/s  '));
  t.true(lines.includes('audit: clean'));
});

test('a usage error exits 2 with the exact message on stderr and nothing on stdout', async (t) => {
  const r = await run(['--loss', '1.5'], 10_000);
  t.is(r.code, 2);
  t.is(r.err, 'start: --loss must be a number in [0, 1) but got "1.5"\ntry --help\n');
  t.is(r.out, '');
});
