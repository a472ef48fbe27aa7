// Entry point of `npm run bench`: see tools/bench/cli.ts.
import { main } from './bench/cli.js';

process.exitCode = await main(process.argv.slice(2), {
  out: (line) => process.stdout.write(`${line}\n`),
  err: (line) => process.stderr.write(`${line}\n`),
  now: () => performance.now(),
  date: () => new Date(),
});
