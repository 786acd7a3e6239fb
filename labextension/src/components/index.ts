export * from './CredentialsHelp';
export * from './InstanceCard';
export * from './InstanceList';
export * from './LaunchForm';
export * from './LogView';
export * from './ProfileCard';
export * from './ProfileList';
export * from './StatusBanner';
