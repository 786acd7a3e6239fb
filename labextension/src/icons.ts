/**
 * The extension's icons.
 */
import { LabIcon } from '@jupyterlab/ui-components';

import ec2Svg from '../style/icons/ec2.svg';

/** A small cloud above a server: the launcher tiles, the palette and the panel tab. */
export const ec2Icon = new LabIcon({ name: 'jupyter-ec2:ec2', svgstr: ec2Svg });
