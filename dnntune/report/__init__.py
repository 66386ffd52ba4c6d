"""What people read: terminal tables, plots and run folders."""
