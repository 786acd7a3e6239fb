/**
 * The status-bar item "2 running · $0.42/h": how many managed instances run and what they
 * cost an hour now, from the instances the model already polls (`hourly_usd`).
 */
import { Widget } from '@lumino/widgets';

import { EC2Model } from './model';
import { IInstance } from './tokens';

/** EC2 states in which an instance's compute is billed. */
const BILLED = new Set(['pending', 'running']);

/** The status text: `2 running · $0.42/h`; `$?/h` when a running instance's price is unknown. */
export function costBarText(instances: ReadonlyArray<IInstance>): string {
  const running = instances.filter(
    item => BILLED.has(item.ec2_state) && item.phase !== 'terminated'
  );
  if (running.length === 0) {
    return 'EC2: none running';
  }
  const prices = running.map(item => item.hourly_usd);
  const rate = prices.every(price => price !== null)
    ? `$${prices.reduce<number>((sum, price) => sum + (price ?? 0), 0).toFixed(2)}/h`
    : '$?/h';
  return `${running.length} running · ${rate}`;
}

/** The status-bar widget; clicking it opens the instances panel. */
export class CostBar extends Widget {
  constructor(model: EC2Model, onClick: () => void) {
    super();
    this._model = model;
    this.addClass('jp-ec2-costbar');
    this.node.title =
      'EC2 instances managed by jupyter-ec2 (estimated on-demand price)';
    this.node.addEventListener('click', onClick);
    model.changed.connect(this._update, this);
    this._update();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._model.changed.disconnect(this._update, this);
    super.dispose();
  }

  private _update(): void {
    this.node.textContent = costBarText(this._model.instances);
  }

  private readonly _model: EC2Model;
}
