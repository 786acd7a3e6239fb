export * from './ProfileCard';
export * from './ProfileList';
export * from './StatusBanner';
