/**
 * The live tail of an instance's log.
 */
import * as React from 'react';

import { LogTail } from '../logtail';

/** Properties of a {@link LogView}. */
export interface ILogViewProps {
  tail: LogTail;
}

/** `12:03:04`: the local time of day of an ISO time, or the text itself when not one. */
function clock(iso: string): string {
  const date = new Date(iso);
  return Number.isNaN(date.getTime())
    ? iso
    : date.toLocaleTimeString([], { hour12: false });
}

/** The lines read so far; keeps to the bottom while the user has not scrolled up. */
export function LogView(props: ILogViewProps): JSX.Element {
  const { tail } = props;
  const ref = React.useRef<HTMLPreElement>(null);
  const atBottom = React.useRef(true);
  const count = tail.lines.length;

  React.useLayoutEffect(() => {
    const node = ref.current;
    if (node !== null && atBottom.current) {
      node.scrollTop = node.scrollHeight;
    }
  }, [count]);

  const onScroll = (): void => {
    const node = ref.current;
    if (node !== null) {
      atBottom.current =
        node.scrollHeight - node.scrollTop - node.clientHeight < 24;
    }
  };

  return (
    <div className="jp-ec2-log" data-testid="ec2-log">
      {tail.error !== null && (
        <p className="jp-ec2-log-error" role="status">
          Could not read the log: {tail.error}
        </p>
      )}
      <pre
        ref={ref}
        className="jp-ec2-log-lines"
        onScroll={onScroll}
        tabIndex={0}
        aria-label={`Log of ${tail.instanceId}`}
        aria-live="polite"
      >
        {count === 0
          ? tail.loading
            ? 'Reading the log…'
            : 'No log lines yet.'
          : tail.lines.map(line => (
              <div
                key={line.seq}
                className="jp-ec2-log-line"
                data-seq={line.seq}
              >
                <span className="jp-ec2-log-time">{clock(line.time)}</span>{' '}
                <span className="jp-ec2-log-step">{line.step}</span>{' '}
                <span className="jp-ec2-log-text">{line.text}</span>
              </div>
            ))}
      </pre>
    </div>
  );
}
