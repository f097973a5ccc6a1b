// Removing state that may or may not be there (cleanup commands, mode switches): each step
// runs even when an earlier one failed, and every failure is logged and kept for the exit code.
import type { Logger } from '../util/log.js';
import type { CommandRunner } from './exec.js';

export class Teardown {
  readonly errors: string[] = [];

  constructor(
    private readonly runner: CommandRunner,
    private readonly log: Logger,
  ) {}

  /** Runs one command; a non-zero exit is recorded. True on success. */
  async step(command: string, args: readonly string[], input?: string): Promise<boolean> {
    const r = await this.runner.run(command, args, input === undefined ? undefined : { input });
    if (r.exitCode === 0) return true;
    const msg = `${command} ${args.join(' ')}: ${r.stderr.trim() || `exit ${r.exitCode}`}`;
    this.errors.push(msg);
    this.log.error({ err: msg }, 'cleanup failed');
    return false;
  }

  /** Destroys ipsets one by one (a set still referenced fails alone). */
  async destroySets(names: Iterable<string>, whose: string): Promise<void> {
    for (const name of names) if (await this.step('ipset', ['destroy', name])) this.log.info({ set: name }, `removed ${whose} ipset`);
  }

  /** Deletes a network interface if it exists. */
  async deleteLink(name: string, whose: string): Promise<void> {
    if ((await this.runner.run('ip', ['link', 'show', name])).exitCode !== 0) return;
    if (await this.step('ip', ['link', 'del', name])) this.log.info({ device: name }, `removed ${whose} dummy interface`);
  }
}
