/** A configuration or command-line problem: kpx prints it on one line and exits 2. */
export class ConfigError extends Error {}
