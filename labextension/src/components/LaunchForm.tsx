/**
 * The launch form: a profile, an optional name, and the overrides a launch may carry.
 *
 * The server validates; a `400` names the refused field and the form shows its message
 * beside that input. Nothing is launched then.
 */
import * as React from 'react';

import { APIError } from '../request';
import { ILaunchRequest, IOverrides, IProfile, OverrideField } from '../tokens';

/** Properties of a {@link LaunchForm}. */
export interface ILaunchFormProps {
  profiles: ReadonlyArray<IProfile>;
  selected: string | null;
  onSelect: (name: string) => void;
  /** Launch; rejects with an {@link APIError} the form shows. */
  onLaunch: (request: ILaunchRequest) => Promise<unknown>;
  /** Profiles a launch would fail for (from "Check setup"): profile → check and reason. */
  blocked?: Readonly<Record<string, { check: string; message: string }>>;
}

/** What the inputs hold (as typed). */
interface IDraft {
  name: string;
  instance_type: string;
  volume_gb: string;
  spot: boolean;
  idle_stop_minutes: string;
}

/** Where a message goes: an input's error key (`overrides.volume_gb`, `profile`…) or `form`. */
type ErrorKey =
  'profile' | 'name' | `overrides.${OverrideField}` | 'overrides' | 'form';

const OVERRIDE_FIELDS: ReadonlyArray<OverrideField> = [
  'instance_type',
  'volume_gb',
  'spot',
  'idle_stop_minutes',
  'ami',
  'region'
];

/** The error each input shows. */
const DRAFT_ERROR_KEYS: Readonly<Record<keyof IDraft, ErrorKey>> = {
  name: 'name',
  instance_type: 'overrides.instance_type',
  volume_gb: 'overrides.volume_gb',
  spot: 'overrides.spot',
  idle_stop_minutes: 'overrides.idle_stop_minutes'
};

/** The inputs' values for a profile (what launching it unchanged would use). */
function draftOf(profile: IProfile | undefined): IDraft {
  return {
    name: '',
    instance_type: profile?.instance_type ?? '',
    volume_gb: profile ? String(profile.volume_gb) : '',
    spot: profile?.spot ?? false,
    idle_stop_minutes: profile ? String(profile.idle_stop_minutes) : ''
  };
}

/** A typed number, or the text itself when it is not one (the server then says why). */
function numberOrText(text: string): number | string {
  const value = Number(text);
  return text.trim() !== '' && Number.isFinite(value) ? value : text;
}

/** The request for a draft: only the fields that differ from the profile are overridden. */
export function requestOf(profile: IProfile, draft: IDraft): ILaunchRequest {
  const overrides: Record<string, unknown> = {};
  const instanceType = draft.instance_type.trim();
  if (instanceType !== '' && instanceType !== profile.instance_type) {
    overrides.instance_type = instanceType;
  }
  const volume = numberOrText(draft.volume_gb);
  if (draft.volume_gb.trim() !== '' && volume !== profile.volume_gb) {
    overrides.volume_gb = volume;
  }
  if (draft.spot !== profile.spot) {
    overrides.spot = draft.spot;
  }
  const idle = numberOrText(draft.idle_stop_minutes);
  if (
    draft.idle_stop_minutes.trim() !== '' &&
    idle !== profile.idle_stop_minutes
  ) {
    overrides.idle_stop_minutes = idle;
  }
  const request: ILaunchRequest = { profile: profile.name };
  const name = draft.name.trim();
  if (name !== '') {
    request.name = name;
  }
  if (Object.keys(overrides).length > 0) {
    // Numbers the user mistyped go as typed: the server names the field it refuses.
    request.overrides = overrides as IOverrides;
  }
  return request;
}

/** The input an error of the server belongs beside. */
export function errorKeyOf(field: string | null): ErrorKey {
  if (field === null) {
    return 'form';
  }
  if (field === 'profile' || field === 'name' || field === 'overrides') {
    return field;
  }
  const bare = field.startsWith('overrides.')
    ? field.slice('overrides.'.length)
    : field;
  const known = OVERRIDE_FIELDS.find(name => name === bare);
  if (known === undefined || known === 'ami' || known === 'region') {
    // No input for it in this form: say it below the form, field and all.
    return 'form';
  }
  return `overrides.${known}`;
}

/** The error text beside an input, when there is one. */
function FieldError(props: {
  errorKey: ErrorKey;
  errors: Partial<Record<ErrorKey, string>>;
}): JSX.Element | null {
  const message = props.errors[props.errorKey];
  if (!message) {
    return null;
  }
  return (
    <p
      className="jp-ec2-field-error"
      id={`jp-ec2-error-${props.errorKey.replace('.', '-')}`}
      data-error-for={props.errorKey}
      role="alert"
    >
      {message}
    </p>
  );
}

/** The launch form of the panel. */
export function LaunchForm(props: ILaunchFormProps): JSX.Element {
  const { profiles, selected, onSelect, onLaunch } = props;
  const blocked = props.blocked ?? {};
  const profile =
    profiles.find(item => item.name === selected) ?? profiles[0] ?? undefined;
  const [draft, setDraft] = React.useState<IDraft>(() => draftOf(profile));
  const [errors, setErrors] = React.useState<Partial<Record<ErrorKey, string>>>(
    {}
  );
  const [busy, setBusy] = React.useState(false);
  const formRef = React.useRef<HTMLFormElement>(null);
  const profileKey = profile ? JSON.stringify(profile) : '';

  // Another profile (or a changed one) starts from its own values.
  React.useEffect(() => {
    setDraft(draftOf(profile));
    setErrors({});
  }, [profileKey]);

  const update = <K extends keyof IDraft>(key: K, value: IDraft[K]): void => {
    setDraft(current => ({ ...current, [key]: value }));
    const errorKey = DRAFT_ERROR_KEYS[key];
    if (errors[errorKey] !== undefined) {
      setErrors(current => {
        const next = { ...current };
        delete next[errorKey];
        return next;
      });
    }
  };

  const describedBy = (key: ErrorKey): string | undefined =>
    errors[key] ? `jp-ec2-error-${key.replace('.', '-')}` : undefined;

  const onSubmit = async (event: React.FormEvent): Promise<void> => {
    event.preventDefault();
    if (!profile || busy || blocked[profile.name] !== undefined) {
      return;
    }
    setErrors({});
    setBusy(true);
    try {
      await onLaunch(requestOf(profile, draft));
      setDraft(draftOf(profile));
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      const key = errorKeyOf(error instanceof APIError ? error.field : null);
      setErrors({ [key]: message });
      const input = formRef.current?.querySelector<HTMLElement>(
        `[data-field="${key}"]`
      );
      input?.focus();
    } finally {
      setBusy(false);
    }
  };

  if (!profile) {
    return (
      <p className="jp-ec2-empty">
        No launch profiles are configured. Add some with{' '}
        <code>c.EC2Launcher.profiles</code> in your Jupyter server config.
      </p>
    );
  }

  return (
    <form
      ref={formRef}
      className="jp-ec2-launch-form"
      data-testid="ec2-launch-form"
      aria-label="Launch an instance"
      noValidate
      onSubmit={event => void onSubmit(event)}
    >
      <div className="jp-ec2-form-grid">
        <label className="jp-ec2-field">
          <span>Profile</span>
          <select
            className="jp-mod-styled"
            name="profile"
            data-field="profile"
            value={profile.name}
            aria-invalid={!!errors.profile}
            aria-describedby={describedBy('profile')}
            onChange={event => onSelect(event.target.value)}
          >
            {profiles.map(item => (
              <option
                key={item.name}
                value={item.name}
                disabled={blocked[item.name] !== undefined}
              >
                {item.display_name}
                {blocked[item.name] !== undefined
                  ? ` (unavailable: ${blocked[item.name].check})`
                  : ''}
              </option>
            ))}
          </select>
          <FieldError errorKey="profile" errors={errors} />
          {blocked[profile.name] !== undefined && (
            <p
              className="jp-ec2-profile-blocked"
              data-testid="ec2-profile-blocked"
              data-check={blocked[profile.name].check}
            >
              Launching {profile.display_name} would fail (
              {blocked[profile.name].check} check):{' '}
              {blocked[profile.name].message}
            </p>
          )}
        </label>

        <label className="jp-ec2-field">
          <span>Name (optional)</span>
          <input
            className="jp-mod-styled"
            type="text"
            name="name"
            data-field="name"
            placeholder={profile.display_name}
            maxLength={128}
            value={draft.name}
            aria-invalid={!!errors.name}
            aria-describedby={describedBy('name')}
            onChange={event => update('name', event.target.value)}
          />
          <FieldError errorKey="name" errors={errors} />
        </label>

        <label className="jp-ec2-field">
          <span>Instance type</span>
          <input
            className="jp-mod-styled"
            type="text"
            name="instance_type"
            data-field="overrides.instance_type"
            spellCheck={false}
            autoComplete="off"
            value={draft.instance_type}
            aria-invalid={!!errors['overrides.instance_type']}
            aria-describedby={describedBy('overrides.instance_type')}
            onChange={event => update('instance_type', event.target.value)}
          />
          <FieldError errorKey="overrides.instance_type" errors={errors} />
        </label>

        <label className="jp-ec2-field">
          <span>Disk (GB)</span>
          <input
            className="jp-mod-styled"
            type="number"
            name="volume_gb"
            data-field="overrides.volume_gb"
            step={1}
            value={draft.volume_gb}
            aria-invalid={!!errors['overrides.volume_gb']}
            aria-describedby={describedBy('overrides.volume_gb')}
            onChange={event => update('volume_gb', event.target.value)}
          />
          <FieldError errorKey="overrides.volume_gb" errors={errors} />
        </label>

        <label className="jp-ec2-field">
          <span>Idle auto-stop (minutes, 0 = off)</span>
          <input
            className="jp-mod-styled"
            type="number"
            name="idle_stop_minutes"
            data-field="overrides.idle_stop_minutes"
            step={1}
            value={draft.idle_stop_minutes}
            aria-invalid={!!errors['overrides.idle_stop_minutes']}
            aria-describedby={describedBy('overrides.idle_stop_minutes')}
            onChange={event => update('idle_stop_minutes', event.target.value)}
          />
          <FieldError errorKey="overrides.idle_stop_minutes" errors={errors} />
        </label>

        <label className="jp-ec2-field jp-ec2-field-check">
          <input
            type="checkbox"
            name="spot"
            data-field="overrides.spot"
            checked={draft.spot}
            aria-invalid={!!errors['overrides.spot']}
            aria-describedby={describedBy('overrides.spot')}
            onChange={event => update('spot', event.target.checked)}
          />
          <span>Spot instance (cheaper; AWS may reclaim it)</span>
          <FieldError errorKey="overrides.spot" errors={errors} />
        </label>
      </div>

      <FieldError errorKey="overrides" errors={errors} />
      <FieldError errorKey="form" errors={errors} />

      <div className="jp-ec2-form-actions">
        <button
          type="submit"
          className="jp-Button jp-mod-styled jp-mod-accept"
          data-action="launch"
          disabled={busy || blocked[profile.name] !== undefined}
        >
          {busy ? 'Launching…' : 'Launch'}
        </button>
      </div>
    </form>
  );
}
