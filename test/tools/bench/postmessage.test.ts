import test from 'ava';
import { runPostMessage } from '../../../tools/bench/postmessage.js';

// Short runs: these check the pipelines work and report sane figures, not the figures themselves.
for (const mode of ['transfer', 'copy'] as const) {
  test(`${mode} pipeline keeps frames in flight and reports per-window rates`, async (t) => {
    // 50 ms windows: on a loaded machine a 20 ms window may hold no round trip at all (the thread was descheduled).
    const r = await runPostMessage({ mode, size: 1500, durationMs: 400, windowMs: 50, warmupWindows: 2 });
    t.is(r.mode, mode);
    t.is(r.size, 1500);
    t.true(r.packets > 100, `only ${r.packets} round trips`);
    t.true(r.pps.windows >= 5);
    t.true(r.pps.p10 > 0 && r.pps.p10 <= r.pps.p50 && r.pps.p50 <= r.pps.p90);
    // Every round trip was counted in some window or after the end: windows cannot claim more than happened.
    t.true((r.pps.mean * r.pps.windows * 50) / 1000 <= r.packets);
    // 'transfer' moves every buffer (this thread's view is detached), 'copy' never does.
    t.true(r.sends >= r.packets);
    t.is(r.detached, mode === 'transfer' ? r.sends : 0);
  });
}

test('a bad size is refused before any worker starts', async (t) => {
  await t.throwsAsync(runPostMessage({ mode: 'copy', size: 0, durationMs: 10 }), { message: 'size must be a positive integer but got 0' });
});
