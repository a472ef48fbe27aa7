// After `tsc`: removes compiled files in dist/ whose TypeScript source is gone (a renamed or deleted module or
// test), so that no stale test runs and no stale module is imported. Plain JavaScript: it runs before and without
// the build's output.
import { readdirSync, rmSync, existsSync } from 'node:fs';
import { join, relative } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const dist = join(root, 'dist');
let removed = 0;

function walk(dir) {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) {
      walk(p);
      if (readdirSync(p).length === 0) rmSync(p, { recursive: true });
      continue;
    }
    const m = /^(.*)\.(js|js\.map|d\.ts)$/.exec(relative(dist, p));
    if (m !== null && !existsSync(join(root, `${m[1]}.ts`))) {
      rmSync(p);
      removed++;
    }
  }
}

if (existsSync(dist)) walk(dist);
if (removed > 0) console.error(`build: removed ${removed} stale files from dist/ (their sources are gone)`);
