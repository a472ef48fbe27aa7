// The simulator's event log: one compact line per thing that happened (faults, connects and disconnects, kills and
// restarts, per-second counters, the audit), in a canonical text form. Everything in it comes from seeded state and
// virtual time, so one seed gives one byte-identical log: two runs are compared with a plain string compare, and the
// first differing line says where two executions parted.
//
// Line form: `<virtual ms, 3 decimals> <who> <what> key=value ...`, e.g. `12000.000 fault loss dur=3000 p=0.05`.

/** A field value: integers print as they are, other numbers with 3 decimals, strings must not contain spaces. */
export type LogValue = number | string | boolean;

/** Formats a virtual time in ms with exactly 3 decimals (microsecond resolution). */
export function formatLogTime(ms: number): string {
  return fixed3(ms);
}

function fixed3(x: number): string {
  // toFixed rounds the binary value; -0 and 0 print alike.
  const s = x.toFixed(3);
  return s === '-0.000' ? '0.000' : s;
}

/** One value as it prints in the log. */
export function formatLogValue(v: LogValue): string {
  if (typeof v === 'number') {
    if (Number.isInteger(v)) return String(v);
    if (!Number.isFinite(v)) return String(v);
    return fixed3(v);
  }
  if (typeof v === 'boolean') return v ? '1' : '0';
  return v;
}

/** An append-only, canonical event log. */
export class EventLog {
  private readonly lines: string[] = [];
  private readonly listeners: ((line: string) => void)[] = [];

  /** Appends `<time> <who> <what> k=v...`; keys print in the order given. */
  add(timeMs: number, who: string, what: string, fields: readonly (readonly [string, LogValue])[] = []): void {
    let line = `${formatLogTime(timeMs)} ${who} ${what}`;
    for (const [k, v] of fields) line += ` ${k}=${formatLogValue(v)}`;
    if (/[\n\r]/.test(line)) throw new Error(`event log lines are single lines: ${JSON.stringify(line)}`);
    this.lines.push(line);
    for (const l of this.listeners) l(line);
  }

  /** Calls `fn` with every line appended from now on (live output, tests). */
  onLine(fn: (line: string) => void): void {
    this.listeners.push(fn);
  }

  /** Lines so far. */
  get length(): number {
    return this.lines.length;
  }

  /** The lines whose `<who> <what>` starts with `prefix` (the time stripped), for tests and reports. */
  find(prefix: string): string[] {
    const out: string[] = [];
    for (const l of this.lines) {
      const rest = l.slice(l.indexOf(' ') + 1);
      if (rest.startsWith(prefix)) out.push(l);
    }
    return out;
  }

  /** The whole log, one line per event, ending with a newline (empty string for none). */
  text(): string {
    return this.lines.length === 0 ? '' : `${this.lines.join('\n')}\n`;
  }
}
