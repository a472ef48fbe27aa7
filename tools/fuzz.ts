// Entry point of `npm run fuzz`: see tools/fuzz/cli.ts.
import { main } from './fuzz/cli.js';

process.exitCode = main(process.argv.slice(2), {
  out: (line) => process.stdout.write(`${line}\n`),
  err: (line) => process.stderr.write(`${line}\n`),
  now: () => performance.now(),
});
